"""Local copies of Hugging Face dataset repos and prepared TFDS datasets, written for real.

`write_hub_dataset` lays out a directory as `hf download --repo-type dataset
--local-dir` leaves a parquet dataset: `CONFIG/SPLIT-00000-of-00001.parquet` (written with
pyarrow) and a README.md whose YAML names each config's data files and, when given, its features
(`dataset_info`, where a ClassLabel's names live). `write_tfds_glue` prepares TFDS's own GLUE
builder from local TSVs (no download), with TFDS's writer, as array_record files.

Run as a script, it writes the hub copy of the shipped review sample (SST-2 format):
`python tests/hub_fixture.py DIR`.
"""

import pathlib
import sys
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

Columns = Mapping[str, list]


def write_hub_dataset(
    root: pathlib.Path,
    configs: Mapping[str, Mapping[str, Columns]],
    class_labels: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> pathlib.Path:
    """A hub-layout dataset folder.

    Args:
        root: the folder (created).
        configs: config name -> split name -> column name -> values.
        class_labels: config name -> column -> ClassLabel names, declared in that config's
            `dataset_info`; configs left out (or None) have no `dataset_info`, so their features
            come from the parquet files alone.

    Returns:
        `root`.
    """
    class_labels = class_labels or {}
    header = {"configs": []}
    if class_labels:
        header["dataset_info"] = []
    for config, splits in configs.items():
        (root / config).mkdir(parents=True, exist_ok=True)
        files = []
        for split, columns in splits.items():
            pq.write_table(
                pa.table(dict(columns)), root / config / f"{split}-00000-of-00001.parquet"
            )
            files.append({"split": split, "path": f"{config}/{split}-*"})
        header["configs"].append({"config_name": config, "data_files": files})
        if config in class_labels:
            columns = next(iter(splits.values()))
            labels = class_labels[config]
            features = [_feature(name, values, labels) for name, values in columns.items()]
            header["dataset_info"].append({"config_name": config, "features": features})
    text = "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n# A local copy\n"
    (root / "README.md").write_text(text, encoding="utf-8")
    return root


def _feature(name: str, values: list, class_labels: Mapping[str, Sequence[str]]) -> dict:
    if name in class_labels:
        names = {str(i): label for i, label in enumerate(class_labels[name])}
        return {"name": name, "dtype": {"class_label": {"names": names}}}
    return {"name": name, "dtype": "string" if isinstance(values[0], str) else "int64"}


def write_tfds_glue(data_dir: pathlib.Path, config: str, glue_dir: pathlib.Path) -> pathlib.Path:
    """Prepares TFDS's `glue/CONFIG` in `data_dir` from GLUE TSVs, as array_record.

    Args:
        data_dir: the TFDS data_dir.
        config: the GLUE config, e.g. "sst2".
        glue_dir: a folder with the task's GLUE folder (`SST-2/train.tsv`, `dev.tsv`, `test.tsv`)
            where TFDS's builder would have extracted its download.

    Returns:
        `data_dir`.
    """
    from tensorflow_datasets.text import glue

    class _Extracted:
        """Stands in for TFDS's download manager: the GLUE zip is already extracted."""

        def download_and_extract(self, url):
            return str(glue_dir)

    class LocalGlue(glue.Glue, skip_registration=True):
        name = "glue"

        def _split_generators(self, dl_manager):
            return super()._split_generators(_Extracted())

    builder = LocalGlue(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return data_dir


def read_glue_tsv(path: pathlib.Path) -> dict[str, list]:
    """A GLUE TSV with a header as columns of strings (labels left as written)."""
    lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    names = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:]]
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def write_sst2_hub_copy(root: pathlib.Path, sst2_dir: pathlib.Path) -> pathlib.Path:
    """The hub layout of `nyu-mll/glue`'s sst2 config from GLUE-format SST-2 files."""
    splits = {}
    for split, file in (("train", "train.tsv"), ("validation", "dev.tsv")):
        columns = read_glue_tsv(sst2_dir / file)
        labels = [int(label) for label in columns["label"]]
        splits[split] = {
            "sentence": columns["sentence"],
            "label": labels,
            "idx": list(range(len(labels))),
        }
    return write_hub_dataset(root, {"sst2": splits}, {"sst2": {"label": ["negative", "positive"]}})


if __name__ == "__main__":
    from infoprompt_jax.data import samples

    print(write_sst2_hub_copy(pathlib.Path(sys.argv[1]), samples.sample_dir("reviews")))
