"""The fidelity question on a 110M encoder: all-mpnet-base-v2 on local SST-2.

SST-2 at k = 256, n_p = 4, 10 epochs, evaluated every 16 steps on the first 256 dev examples.
Rows: InfoPrompt, beta = gamma = 0, WARP and IDPG; 3 seeds: 12 cells, seeds the outermost axis,
so a partial grid holds whole seeds of every row. The model is the directory that
`python -m infoprompt_jax.tools.assemble_mpnet` makes ($MPNET_DIR, else its default --out).

    python -m infoprompt_jax.tools.assemble_mpnet
    python -m infoprompt_jax.experiments --grid=configs/grids/mpnet_fidelity.py \
        --root=runs/mpnet_fidelity --stack_rows

Rerunning the same command finishes what an earlier one started.
"""

import importlib.util
import os
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
ROWS = ("InfoPrompt", "beta=gamma=0", "WARP", "IDPG")
# tools/assemble_mpnet.py's default --out.
DEFAULT_MPNET_DIR = pathlib.Path("~/.cache/infoprompt_jax/all-mpnet-base-v2")


def mpnet_dir() -> str:
    """$MPNET_DIR, else the directory `tools.assemble_mpnet` writes by default."""
    path = pathlib.Path(os.environ.get("MPNET_DIR") or DEFAULT_MPNET_DIR).expanduser()
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"No all-mpnet-base-v2 in {path}: run `python -m infoprompt_jax.tools.assemble_mpnet`"
            " (or set MPNET_DIR to the directory it made)."
        )
    return str(path)


def get_grid():
    """The MPNet fidelity grid (format: infoprompt_jax/grid/grids.py)."""
    return {
        "tasks": {
            "sst2": {
                "config": "configs/sst2.py",
                "overrides": {"data.dir": str(minilm_smoke.GLUE_DIR / "SST-2")},
            },
        },
        "rows": {row: paper_full.ROWS[row] for row in ROWS},
        "num_tokens": [4],
        "few_shot": [256],
        "seeds": [0, 1, 2],
        "overrides": {
            "model.name": mpnet_dir(),
            "data.source": "local",
            "data.max_eval_examples": 256,
            "train.num_epochs": 10,
            "train.eval_every_steps": 16,
            "max_len": 128,
            "cache_unprompted": True,
        },
    }
