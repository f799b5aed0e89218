"""The GPU stacking benchmark's slice of paper_few_shot: RTE, k = 256, the 4 InfoPrompt rows.

InfoPrompt, gamma=0, beta=0 and beta=gamma=0 x 5 seeds = 20 cells, n_p = 4, 3 epochs, on a
random-weight roberta-large (speed and memory depend on the shape only) in bf16 with fused
attention. infoprompt_jax/tools/bench_stacking.py times it separate (20 processes), `--stack_seeds` (4) and
`--stack_rows` (1); docs/stacking.md has the commands. Paths:
- `$ROBERTA_LARGE_DIR`, else /tmp/roberta_large_random: the checkpoint that
  `python -m infoprompt_jax.tools.random_encoder --shape=roberta-large --output=DIR` writes;
- `$GLUE_DIR`, else `<repo>/../shared/data/glue`: the GLUE folders (RTE's TSVs in `RTE/`).
"""

import os
import pathlib

from configs.grids import paper_full

# configs/grids/gpu_stack_slice.py -> the repository root.
REPO = pathlib.Path(__file__).resolve().parents[2]
INFOPROMPT_ROWS = ("InfoPrompt", "gamma=0", "beta=0", "beta=gamma=0")


def get_grid():
    """The slice (format: infoprompt_jax/grid/grids.py)."""
    glue_dir = pathlib.Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))
    return {
        "tasks": {
            "rte": {"config": "configs/rte.py", "overrides": {"data.dir": str(glue_dir / "RTE")}}
        },
        "rows": {row: paper_full.ROWS[row] for row in INFOPROMPT_ROWS},
        "num_tokens": [4],
        "few_shot": [256],
        "seeds": [0, 1, 2, 3, 4],
        "overrides": {
            "model.name": os.environ.get("ROBERTA_LARGE_DIR", "/tmp/roberta_large_random"),
            "model.dtype": "bfloat16",
            "model.attention": "fused",
            "data.source": "local",
            "train.num_epochs": 3,
            "cache_unprompted": True,
        },
    }
