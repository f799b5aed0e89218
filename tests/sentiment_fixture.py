"""A small learnable sentiment task built in code, for tests that train."""

import ml_collections

from configs import default
from infoprompt_jax import data

POSITIVE = ("a great movie", "great fun and a great story", "the film was great",
            "really great actor", "it is great", "great plot")
NEGATIVE = ("a terrible movie", "terrible and boring", "the film was terrible",
            "really terrible actor", "it is terrible", "terrible plot")


def examples(count: int) -> list[data.Example]:
    """`count` SST-2-style examples alternating negative (0) and positive (1)."""
    out = []
    for i in range(count):
        pool = POSITIVE if i % 2 else NEGATIVE
        out.append(data.Example({"sentence": pool[(i // 2) % len(pool)]}, i % 2, f"fixture:{i}"))
    return out


def tiny_config(model_dir, method: str = "infoprompt") -> ml_collections.ConfigDict:
    """The `:tiny` SST-2 config on a local tiny checkpoint."""
    config = default.get_config("tiny")
    config.task = "sst2"
    config.method = method
    config.model.name = str(model_dir)
    config.model.adapter_size = 4
    config.data.source = "local"
    config.train.batch_size = 8
    return config
