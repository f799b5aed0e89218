"""The paper's few-shot tables (Tables 3 and 4): k = 64 and 256 training examples, n_p = 4.

Same tasks, rows and model as paper_full.py; the k examples are drawn with each run's seed, the
same subset for every method at a given seed.
"""

from configs.grids import paper_full


def get_grid():
    """The few-shot grid (format: infoprompt_jax/grid/grids.py)."""
    return {
        "tasks": paper_full.TASKS,
        "rows": paper_full.ROWS,
        "num_tokens": [4],
        "few_shot": [64, 256],
        "seeds": [0, 1, 2, 3, 4],
        "overrides": {"model.name": "roberta-large", "data.source": "hf", "train.num_epochs": 30},
    }
