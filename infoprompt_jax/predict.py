"""Prediction with an exported classifier (`export.py`): a Python class and a command line.

    classifier = InfoPromptClassifier.load("exports/sst2")
    classifier.predict(["a great movie", "a dull plot"])
    # [{"label": "positive", "label_id": 1, "probabilities": {"negative": 0.1, ...}}, ...]

`python -m infoprompt_jax.predict --export_dir=E --input=FILE --output=OUT.jsonl` predicts every
input of FILE (see `read_inputs` for the formats) and writes one JSON line per input, in order.

The export holds only the trainable params; the frozen encoder is read again from the encoder
checkpoint the export names, and loading refuses a checkpoint whose weights checksum differs from
the one training used, since the prompts and head are meaningless on another encoder.
"""

import dataclasses
import functools
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from infoprompt_jax import cli, partition, sharding, steps, templates, train
from infoprompt_jax import components as components_lib
from infoprompt_jax import data as data_lib
from infoprompt_jax import encoder as encoder_lib
from infoprompt_jax import export as export_lib
from infoprompt_jax import tasks as tasks_lib

# One input: a string (one-field templates), a tuple of strings in template field order, or a
# mapping of field name to string.
Input = str | Sequence[str] | Mapping[str, str]


def read_export(export_dir: str | pathlib.Path) -> tuple[dict[str, Any], ml_collections.ConfigDict]:
    """(export.json contents, run config) of an export directory."""
    export_dir = pathlib.Path(export_dir)
    info_path = export_dir / export_lib.EXPORT_FILE
    if not info_path.is_file():
        raise FileNotFoundError(
            f"{info_path} not found: --export_dir must be a directory written by "
            "python -m infoprompt_jax.export --workdir=W --output=DIR."
        )
    info = json.loads(info_path.read_text())
    if info.get("format_version") != export_lib.FORMAT_VERSION:
        raise ValueError(
            f"{info_path} has format_version {info.get('format_version')!r}; this version of "
            f"infoprompt_jax reads {export_lib.FORMAT_VERSION}. Re-export the run with it."
        )
    config = json.loads((export_dir / export_lib.CONFIG_FILE).read_text())
    return info, ml_collections.ConfigDict(config)


def resolve_encoder(info: Mapping[str, Any], encoder_path: str | None = None) -> pathlib.Path:
    """The local encoder checkpoint, checked against the checksum recorded at export.

    Args:
        info: the export.json contents.
        encoder_path: a local directory or hub id; None tries the directory recorded at export,
            then the recorded name (a hub id, or the path as the run's config gave it).

    Raises:
        ValueError: the encoder found has other weights than the one training used.
        FileNotFoundError: no encoder could be found.
    """
    recorded = info["encoder"]
    if encoder_path is not None:
        candidate = encoder_path
    elif pathlib.Path(recorded["model_dir"]).is_dir():
        candidate = recorded["model_dir"]
    else:
        candidate = recorded["name"]
    try:
        model_dir = encoder_lib.resolve_model_dir(candidate)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"Cannot find the encoder this export was trained with ({recorded['name']!r}, "
            f"exported from {recorded['model_dir']}): {e} Pass its checkpoint directory with "
            "encoder_path= (--encoder_path=DIR)."
        ) from e
    checksum = encoder_lib.weights_checksum(model_dir)
    if checksum != recorded["weights_checksum"]:
        raise ValueError(
            f"Encoder mismatch: {model_dir} has weights checksum {checksum}, but the export was "
            f"trained with {recorded['name']!r} ({recorded['model_dir']}), weights checksum "
            f"{recorded['weights_checksum']}. The prompts only work on that encoder: pass its "
            "checkpoint directory with encoder_path= (--encoder_path=DIR)."
        )
    return model_dir


def task_from_export(info: Mapping[str, Any]) -> tasks_lib.TaskSpec:
    """The exported task with the label set training used (no data needs to be read)."""
    task = tasks_lib.get_task(info["task"]["name"])
    labels = tuple(info["task"]["label_names"])
    if not task.label_names:  # Labels discovered from the training data (ACE).
        return task.with_labels(labels)
    if task.label_names != labels:
        raise ValueError(
            f"The export's labels {list(labels)} differ from task {task.name!r}'s registered "
            f"labels {list(task.label_names)}: the export comes from another version of "
            "infoprompt_jax; re-export it with this one."
        )
    return task


def load_trainable(path: pathlib.Path) -> dict[str, Any]:
    """The nested trainable params from `params.safetensors`."""
    import safetensors.numpy  # Deferred: only loading needs it.

    return partition.unflatten(safetensors.numpy.load_file(str(path)))


def frozen_params(comps: components_lib.Components) -> dict[str, Any]:
    """The frozen params exactly as training had them, from the pretrained checkpoint alone.

    Only the encoder and the MLM transform come from the checkpoint (`model_init.init_params`);
    everything else is trainable, so splitting these two alone gives training's frozen tree
    without initialising (or allocating) the rest of the model.
    """
    pretrained = {"encoder": comps.encoder_params}
    if comps.method.model.has_mlm_transform:
        pretrained["task_head"] = {"mlm_transform": comps.mlm_transform}
    return partition.split_params(pretrained, comps.method.name)[1]


def check_params(
    comps: components_lib.Components, params: Mapping[str, Any], where: pathlib.Path
) -> None:
    """Raises if `params` is not the tree the model expects (names, shapes)."""
    sample = export_lib.sample_batch(comps)
    expected = partition.flatten(jax.eval_shape(lambda: comps.init_params(sample)))
    found = partition.flatten(params)
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    wrong = [
        f"{p}: {tuple(found[p].shape)} (model: {tuple(expected[p].shape)})"
        for p in sorted(expected.keys() & found.keys())
        if tuple(found[p].shape) != tuple(expected[p].shape)
    ]
    if missing or extra or wrong:
        raise ValueError(
            f"{where} does not fit the exported config's model: missing {missing}, "
            f"unexpected {extra}, wrong shapes {wrong}. Re-export the run."
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    shifted = np.asarray(logits, np.float64) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class InfoPromptClassifier:
    """A trained prompt and head on their frozen encoder, ready to classify text.

    Attributes:
        components: the run's components (task, tokenizers, model).
        info: the export.json contents.
    """

    def __init__(
        self,
        components: components_lib.Components,
        trainable: Any,
        frozen: Any,
        info: Mapping[str, Any],
    ):
        self.components = components
        self.info = dict(info)
        self._trainable = jax.device_put(trainable)
        self._frozen = jax.device_put(frozen)
        # The training loop's own eval step: `apply` without an rng gives the logits.
        self._logits_fn = jax.jit(functools.partial(steps.eval_step, model=components.model))
        self._mesh = sharding.make_mesh(devices=jax.local_devices()[:1])

    @classmethod
    def load(
        cls, export_dir: str | pathlib.Path, encoder_path: str | None = None
    ) -> "InfoPromptClassifier":
        """Loads an export directory.

        Args:
            export_dir: written by `python -m infoprompt_jax.export`.
            encoder_path: the encoder checkpoint (directory or hub id); default: the one
                recorded at export. Its weights must match the recorded checksum.

        Raises:
            ValueError: the encoder's weights differ from training's (the message gives both
                checksums), or the params do not fit the model.
        """
        export_dir = pathlib.Path(export_dir)
        info, config = read_export(export_dir)
        config.model.name = str(resolve_encoder(info, encoder_path))
        comps = components_lib.build_components(config, task=task_from_export(info))
        comps = _with_exported_tokenizer(comps, export_dir / export_lib.TOKENIZER_DIR)
        params_path = export_dir / export_lib.PARAMS_FILE
        trainable = load_trainable(params_path)
        frozen = frozen_params(comps)
        check_params(comps, partition.merge_params(trainable, frozen), params_path)
        return cls(comps, trainable, frozen, info)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.components.task.label_names

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The template's text fields, in the order tuple inputs give them."""
        return self.components.template_tokenizer.template.fields

    def predict(self, inputs: Sequence[Input], batch_size: int = 32) -> list[dict[str, Any]]:
        """Classifies inputs.

        Args:
            inputs: strings (one-field tasks such as SST-2), tuples `(text_a, text_b)` (pair
                tasks such as RTE; in general one string per field of `text_fields`), or dicts
                of field name to text.
            batch_size: rows per compiled call (the last batch is padded).

        Returns:
            Per input, in order: `{"label": name, "label_id": int, "probabilities": {name: p}}`.
        """
        probabilities = softmax(self.predict_logits(inputs, batch_size))
        names = self.label_names
        return [
            {
                "label": names[int(np.argmax(row))],
                "label_id": int(np.argmax(row)),
                "probabilities": {name: float(p) for name, p in zip(names, row)},
            }
            for row in probabilities
        ]

    def predict_logits(self, inputs: Sequence[Input], batch_size: int = 32) -> np.ndarray:
        """Class logits `[N, C]` of the inputs, in order (see `predict`)."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; use a positive batch size.")
        fields = self.as_fields(inputs)
        if not fields:
            return np.zeros((0, len(self.label_names)), np.float32)
        arrays = self.components.template_tokenizer.encode_batch(fields)
        # Batched as the training loop evaluates: shortest first, cut to the run's buckets.
        return train.predict_logits(
            self._logits_fn,
            self._trainable,
            self._frozen,
            arrays,
            batch_size,
            self._mesh,
            train.run_lengths(self.components.config),
        )

    def as_fields(self, inputs: Sequence[Input]) -> list[dict[str, str]]:
        """The inputs as dicts of template fields; errors name the input at fault."""
        if isinstance(inputs, (str, Mapping)):
            raise TypeError(
                "inputs must be a list of inputs; wrap a single input in a list: predict([text])."
            )
        return [self._input_fields(i, item) for i, item in enumerate(inputs)]

    def _input_fields(self, index: int, item: Input) -> dict[str, str]:
        fields, task = self.text_fields, self.components.task.name
        expects = (
            f"task {task!r} reads {len(fields)} text field(s) {list(fields)}: pass "
            + ("a string" if len(fields) == 1 else f"a tuple of {len(fields)} strings")
            + " or a dict with those keys"
        )
        if isinstance(item, Mapping):
            missing = [f for f in fields if f not in item]
            if missing:
                raise ValueError(f"Input {index} lacks the field(s) {missing}; {expects}.")
            return {f: item[f] for f in fields}
        texts = (item,) if isinstance(item, str) else tuple(item)
        if len(texts) != len(fields) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"Input {index} is {item!r}; {expects}.")
        return dict(zip(fields, texts))


def _with_exported_tokenizer(
    comps: components_lib.Components, tokenizer_dir: pathlib.Path
) -> components_lib.Components:
    """The components with the tokenizer saved at export, which is the one training used."""
    import transformers  # Heavy import, deferred to where it is needed.

    if not tokenizer_dir.is_dir():
        return comps
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    previous = comps.template_tokenizer
    template_tokenizer = templates.TemplateTokenizer(
        tokenizer,
        previous.template,
        previous.num_prompt_tokens,
        previous.max_len,
        use_token_types=previous.use_token_types,
    )
    return dataclasses.replace(comps, tokenizer=tokenizer, template_tokenizer=template_tokenizer)


# ----------------------------------------------------------------------------
# Input files.


@dataclasses.dataclass(frozen=True)
class InputRow:
    """One input of a file: its fields, its gold label name if the file has one, its line."""

    fields: dict[str, str]
    gold: str | None
    line: int


def read_inputs(
    path: str | pathlib.Path, task: tasks_lib.TaskSpec, text_fields: Sequence[str]
) -> list[InputRow]:
    """The inputs of a file, in order.

    Formats, tried in this order:
    * a file named like one of the task's local split files (`dev.tsv`, `TEST_FILE_FULL.TXT`,
      `dev.jsonl`): read with the task's own reader, gold labels included;
    * a `.tsv` whose header names the task's GLUE text columns (e.g. GLUE's unlabelled
      `test.tsv`, `index<TAB>sentence`): those columns, and the label column when present;
    * otherwise plain text: one input per line, the fields separated by tabs (`text_a<TAB>
      text_b` for pair tasks); blank lines are skipped.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input={path}: no such file.")
    if path.name in {name for _, name in task.local_files}:
        return [
            InputRow(dict(raw.fields), raw.label, raw.line)
            for raw in data_lib._read_raw(task, path)
        ]  # pylint: disable=protected-access
    if path.suffix == ".tsv":
        rows = _read_glue_tsv(path, task)
        if rows is not None:
            return rows
    return _read_plain_text(path, text_fields)


def _read_glue_tsv(path: pathlib.Path, task: tasks_lib.TaskSpec) -> list[InputRow] | None:
    """The text (and label) columns of a GLUE TSV by header name; None without such a header."""
    fmt = data_lib._TSV_FORMATS.get(task.file_format)  # pylint: disable=protected-access
    lines = data_lib._read_lines(path)  # pylint: disable=protected-access
    if fmt is None or not lines:
        return None
    header = [c.strip() for c in lines[0].split("\t")]
    columns = {field: fmt.columns[i] for field, i in fmt.text.items()}
    if not all(name in header for name in columns.values()):
        return None
    text_at = {field: header.index(name) for field, name in columns.items()}
    label_name = fmt.columns[fmt.label]
    label_at = header.index(label_name) if label_name in header else None
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != len(header):
            raise ValueError(
                f"{path} line {lineno}: expected {len(header)} tab-separated "
                f"columns ({' '.join(header)}), found {len(cols)}."
            )
        gold = None
        if label_at is not None:
            raw = cols[label_at].strip()
            gold = fmt.label_map.get(raw, raw) if fmt.label_map else raw
        rows.append(InputRow({f: cols[i].strip() for f, i in text_at.items()}, gold, lineno))
    return rows


def _read_plain_text(path: pathlib.Path, text_fields: Sequence[str]) -> list[InputRow]:
    rows = []
    lines = data_lib._read_lines(path)  # pylint: disable=protected-access
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        texts = line.split("\t")
        if len(texts) != len(text_fields):
            raise ValueError(
                f"{path} line {lineno}: found {len(texts)} tab-separated text(s); the task "
                f"reads {len(text_fields)} ({'<TAB>'.join(text_fields)}) per line."
            )
        rows.append(InputRow(dict(zip(text_fields, texts)), None, lineno))
    return rows


def predict_file(
    export_dir: str,
    input_path: str,
    output_path: str,
    encoder_path: str | None = None,
    batch_size: int = 32,
) -> int:
    """Predicts every input of a file and writes one JSON line each; returns the count.

    Each line: `{"line": N, "input": {field: text}, "label", "label_id", "probabilities"}`, plus
    `"gold"` (the label name) when the file carries labels.
    """
    classifier = InfoPromptClassifier.load(export_dir, encoder_path)
    rows = read_inputs(input_path, classifier.components.task, classifier.text_fields)
    results = classifier.predict([row.fields for row in rows], batch_size)
    if jax.process_index() == 0:
        output = pathlib.Path(output_path)
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w", encoding="utf-8") as f:
            for row, result in zip(rows, results):
                record = {"line": row.line, "input": row.fields, **result}
                if row.gold is not None:
                    record["gold"] = row.gold
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    _log_accuracy(rows, results)
    return len(rows)


def _log_accuracy(rows: Sequence[InputRow], results: Sequence[Mapping[str, Any]]) -> None:
    golds = [
        (row.gold, result["label"]) for row, result in zip(rows, results) if row.gold is not None
    ]
    if golds:
        correct = sum(gold == label for gold, label in golds)
        logging.info("Accuracy on the %d labelled inputs: %.4f", len(golds), correct / len(golds))


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
    """Defines the command line's flags in `flag_values`; returns their holders by name.

    Called only when run as a program: export.py has an --output flag too, and absl refuses a
    flag name that two modules imported into one process both define at import time.
    """

    def define(kind, name, default, help_text):
        return kind(name, default, help_text, flag_values=flag_values)

    holders = {
        "export_dir": define(
            flags.DEFINE_string,
            "export_dir",
            None,
            "Directory written by python -m infoprompt_jax.export.",
        ),
        "input": define(
            flags.DEFINE_string,
            "input",
            None,
            "File of inputs: a GLUE TSV of the task, or plain text (one input a "
            "line, a tab between the texts of a pair).",
        ),
        "output": define(
            flags.DEFINE_string, "output", None, "JSON-lines file of predictions to write."
        ),
        "encoder_path": define(
            flags.DEFINE_string,
            "encoder_path",
            None,
            "Encoder checkpoint (default: the one recorded at export).",
        ),
        "batch_size": define(flags.DEFINE_integer, "batch_size", 32, "Rows per compiled call."),
    }
    flags.mark_flags_as_required(["export_dir", "input", "output"], flag_values=flag_values)
    return holders


def main(argv: list[str], holders: dict[str, flags.FlagHolder]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    count = predict_file(
        holders["export_dir"].value,
        holders["input"].value,
        holders["output"].value,
        holders["encoder_path"].value,
        holders["batch_size"].value,
    )
    logging.info("Wrote %d predictions to %s.", count, holders["output"].value)


if __name__ == "__main__":
    _HOLDERS = define_flags()
    cli.run(lambda argv: main(argv, _HOLDERS))
