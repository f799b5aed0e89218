"""The paper's full-data tables (Tables 1 and 2): every method and ablation, n_p 1 and 4.

roberta-large from the hub (`data.source=hf`), 30 epochs, 5 seeds: 450 runs. SemEval reads its
release files: set SEMEVAL_DIR below (or `--config.data.dir` in the cell overrides).
"""

# The paper's rows, in its order: InfoPrompt, its ablations, then the baselines (M-IDPG added:
# the IDPG paper's strongest variant).
ROWS = {
    "InfoPrompt": {"method": "infoprompt"},
    "gamma=0": {"method": "infoprompt", "loss.gamma": 0.0},
    "beta=0": {"method": "infoprompt", "loss.beta": 0.0},
    "beta=gamma=0": {"method": "infoprompt", "loss.beta": 0.0, "loss.gamma": 0.0},
    "WARP": {"method": "warp"},
    # IDPG (Wu et al. 2022) with its PHM generator: S-IDPG prompts the input, M-IDPG every layer.
    "IDPG": {"method": "idpg"},
    "M-IDPG": {"method": "idpg", "model.idpg_layers": "all"},
    "Adapter": {"method": "adapter"},
    "Fine-tuning": {"method": "finetune"},
}

TASKS = {
    "rte": "configs/rte.py",
    "mrpc": "configs/mrpc.py",
    "cola": "configs/cola.py",
    "sst2": "configs/sst2.py",
    "semeval": {
        "config": "configs/semeval.py",
        "overrides": {"data.source": "local", "data.dir": "data/semeval2010_task8"},
    },
}


def get_grid():
    """The full-data grid (format: infoprompt_jax/grid/grids.py)."""
    return {
        "tasks": TASKS,
        "rows": ROWS,
        "num_tokens": [1, 4],
        "few_shot": [0],
        "seeds": [0, 1, 2, 3, 4],
        "overrides": {"model.name": "roberta-large", "data.source": "hf", "train.num_epochs": 30},
    }
