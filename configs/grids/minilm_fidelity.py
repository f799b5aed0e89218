"""Does InfoPrompt's objective do anything on a real encoder? all-MiniLM-L6-v2 on local SST-2.

SST-2 at k = 64 and 256, n_p = 4, 5 seeds, evaluated every 8 steps on the first 256 dev examples
(so `report` can give the steps to 95% of the final score). Rows: InfoPrompt, its three
ablations, the WARP, IDPG and M-IDPG baselines, the released code's variant, and InfoPrompt with each
prompted scheme of representation negatives, `other_examples` and `other_prompts`
(docs/design.md). 10 rows x 2 k x 5 seeds = 100 cells; seeds are the outermost axis, so a partial
grid holds whole seeds of every row.

    python -m infoprompt_jax.experiments --grid=configs/grids/minilm_fidelity.py \
        --root=runs/minilm_fidelity

Rerunning the same command finishes what an earlier one started.
"""

import importlib.util
import pathlib


def _sibling(name: str):
    """A grid module beside this one (grid files are loaded by path, not as a package)."""
    spec = importlib.util.spec_from_file_location(
        name, pathlib.Path(__file__).with_name(f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


minilm_smoke = _sibling("minilm_smoke")
paper_full = _sibling("paper_full")
# The paper's InfoPrompt rows and prompt baselines (Adapter and Fine-tuning left out).
PAPER_ROWS = ("InfoPrompt", "gamma=0", "beta=0", "beta=gamma=0", "WARP", "IDPG", "M-IDPG")


def get_grid():
    """The fidelity grid (format: infoprompt_jax/grid/grids.py)."""
    return {
        "tasks": {
            "sst2": {
                "config": "configs/sst2.py",
                "overrides": {"data.dir": str(minilm_smoke.GLUE_DIR / "SST-2")},
            },
        },
        "rows": {
            **{row: paper_full.ROWS[row] for row in PAPER_ROWS},
            "released": {"method": "infoprompt", "variant": "released"},
            "InfoPrompt other_examples": {
                "method": "infoprompt",
                "loss.representation_negatives": "other_examples",
            },
            "InfoPrompt other_prompts": {
                "method": "infoprompt",
                "loss.representation_negatives": "other_prompts",
            },
        },
        "num_tokens": [4],
        "few_shot": [64, 256],
        "seeds": [0, 1, 2, 3, 4],
        "overrides": {
            "model.name": minilm_smoke.minilm_dir(),
            "data.source": "local",
            "data.max_eval_examples": 256,
            "train.num_epochs": 10,
            "train.eval_every_steps": 8,
            "max_len": 128,
            "cache_unprompted": True,
        },
    }
