"""The stacking benchmark's slice: all-MiniLM-L6-v2 on local SST-2, 64-shot, n_p = 4, 3 seeds.

Two rows (InfoPrompt and beta=gamma=0) x 3 seeds = 6 cells, 10 epochs, the whole dev set (872).
infoprompt_jax/tools/bench_stacking.py times it three ways (docs/stacking.md): separate (6 processes),
`--stack_seeds` (2 processes) and `--stack_rows` (1 process), e.g. the last one alone:

    python -m infoprompt_jax.experiments --grid=configs/grids/minilm_stack_slice.py \
        --root=runs/slice_rows --stack_rows
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "minilm_smoke", pathlib.Path(__file__).with_name("minilm_smoke.py")
)
minilm_smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(minilm_smoke)


def get_grid():
    """The slice (format: infoprompt_jax/grid/grids.py)."""
    grid = minilm_smoke.get_grid()
    grid["tasks"] = {"sst2": grid["tasks"]["sst2"]}
    grid["rows"] = {row: grid["rows"][row] for row in ("InfoPrompt", "beta=gamma=0")}
    grid["few_shot"] = [64]
    return grid
