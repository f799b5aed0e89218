"""A small learnable sentiment task built in code, for tests that train."""

import pathlib

import ml_collections

from configs import default
from infoprompt_jax.data import sources as data

POSITIVE = (
    "a great movie",
    "great fun and a great story",
    "the film was great",
    "really great actor",
    "it is great",
    "great plot",
)
NEGATIVE = (
    "a terrible movie",
    "terrible and boring",
    "the film was terrible",
    "really terrible actor",
    "it is terrible",
    "terrible plot",
)


def examples(count: int) -> list[data.Example]:
    """`count` SST-2-style examples alternating negative (0) and positive (1)."""
    out = []
    for i in range(count):
        pool = POSITIVE if i % 2 else NEGATIVE
        out.append(data.Example({"sentence": pool[(i // 2) % len(pool)]}, i % 2, f"fixture:{i}"))
    return out


def write_sst2_tsv(path: pathlib.Path, examples_: list[data.Example]) -> None:
    """A GLUE-format SST-2 file (header `sentence label`, GLUE's space before the tab)."""
    rows = [f"{ex.fields['sentence']} \t{ex.label}" for ex in examples_]
    path.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")


def write_sst2(directory: pathlib.Path, train_count: int, dev_count: int) -> pathlib.Path:
    """`directory` with a `train.tsv` and a `dev.tsv` of the first `count` examples each."""
    directory.mkdir(parents=True, exist_ok=True)
    write_sst2_tsv(directory / "train.tsv", examples(train_count))
    write_sst2_tsv(directory / "dev.tsv", examples(dev_count))
    return directory


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
