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

from infoprompt_jax import cli, config_loading
from infoprompt_jax import export as export_lib
from infoprompt_jax.data import readers, templates
from infoprompt_jax.data import tasks as tasks_lib
from infoprompt_jax.model import pretrained, safetensors_file
from infoprompt_jax.model import trainable as trainable_lib
from infoprompt_jax.train import batching, run_state, sharding, steps
from infoprompt_jax.train import components as components_lib

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
    # An export of an older version's run: its config reads as the workdir's did.
    return info, config_loading.load_file(export_dir / export_lib.CONFIG_FILE)


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
        model_dir = pretrained.resolve_model_dir(candidate)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"Cannot find the encoder this export was trained with ({recorded['name']!r}, "
            f"exported from {recorded['model_dir']}): {e} Pass its checkpoint directory with "
            "encoder_path= (--encoder_path=DIR)."
        ) from e
    checksum = pretrained.weights_checksum(model_dir)
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


def load_trainable(path: pathlib.Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """The nested trainable params from an export's `params.safetensors`, checked.

    Raises:
        DamagedFileError: the file is damaged, differs from the one exported (its SHA-256), or
            holds non-finite values.
    """
    fix = "Export the run again: python -m infoprompt_jax.export --workdir=W --output=DIR."
    if expected_sha256 is not None and safetensors_file.sha256(path) != expected_sha256:
        raise safetensors_file.DamagedFileError(
            f"{path} is not the file that was exported: its SHA-256 is "
            f"{safetensors_file.sha256(path)}, export.json records {expected_sha256}. {fix}"
        )
    tensors = safetensors_file.read(path, fix)
    safetensors_file.check_finite(tensors, str(path), fix)
    return trainable_lib.unflatten({k: np.asarray(v) for k, v in tensors.items()})


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
        components = components_lib.build_components(config, task=task_from_export(info))
        components = _with_exported_tokenizer(components, export_dir / export_lib.TOKENIZER_DIR)
        params_path = export_dir / export_lib.PARAMS_FILE
        trainable = load_trainable(params_path, info["params"].get("sha256"))
        frozen = run_state.pretrained_frozen(components)
        run_state.check_params(
            components,
            trainable_lib.merge_params(trainable, frozen),
            params_path,
            "Re-export the run.",
        )
        return cls(components, trainable, frozen, info)

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
        return batching.predict_logits(
            self._logits_fn,
            self._trainable,
            self._frozen,
            arrays,
            batch_size,
            self._mesh,
            batching.run_lengths(self.components.config),
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
            texts = tuple(item[f] for f in fields)
        elif isinstance(item, str):
            texts = (item,)
        elif isinstance(item, (tuple, list)):
            texts = tuple(item)
        else:
            raise TypeError(f"Input {index} is {item!r} of type {type(item).__name__}; {expects}.")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError(f"Input {index} is {item!r}, not all strings; {expects}.")
        if len(texts) != len(fields):
            raise ValueError(f"Input {index} is {item!r}; {expects}.")
        return dict(zip(fields, texts))


def _with_exported_tokenizer(
    components: components_lib.Components, tokenizer_dir: pathlib.Path
) -> components_lib.Components:
    """The components with the tokenizer saved at export, which is the one training used."""
    import transformers  # Heavy import, deferred to where it is needed.

    if not tokenizer_dir.is_dir():
        return components
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    previous = components.template_tokenizer
    template_tokenizer = templates.TemplateTokenizer(
        tokenizer,
        previous.template,
        previous.num_prompt_tokens,
        previous.max_len,
        use_token_types=previous.use_token_types,
    )
    return dataclasses.replace(
        components, tokenizer=tokenizer, template_tokenizer=template_tokenizer
    )


# ----------------------------------------------------------------------------
# Input files.


def read_inputs(
    path: str | pathlib.Path, task: tasks_lib.TaskSpec, text_fields: Sequence[str]
) -> list[readers.Record]:
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
        records = readers.read_task_file(task, path)
    else:
        fmt = readers.TSV_FORMATS.get(task.file_format)
        records = None
        if path.suffix == ".tsv" and fmt is not None:
            records = readers.read_glue_tsv(path, fmt, labelled=False)
        if records is None:
            records = readers.read_plain_lines(path, text_fields)
    return records


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
                if row.label is not None:
                    record["gold"] = row.label
                # allow_nan=False: a bare NaN is not JSON; the params were checked finite.
                f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
    _log_accuracy(rows, results)
    return len(rows)


def _log_accuracy(rows: Sequence[readers.Record], results: Sequence[Mapping[str, Any]]) -> None:
    golds = [
        (row.label, result["label"]) for row, result in zip(rows, results) if row.label is not None
    ]
    if golds:
        correct = sum(gold == label for gold, label in golds)
        logging.info("Accuracy on the %d labelled inputs: %.4f", len(golds), correct / len(golds))


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""

    def define(kind, name, default, help_text):
        kind(name, default, help_text, flag_values=flag_values)

    define(
        flags.DEFINE_string,
        "export_dir",
        None,
        "Directory written by python -m infoprompt_jax.export.",
    )
    define(
        flags.DEFINE_string,
        "input",
        None,
        "File of inputs: a GLUE TSV of the task, or plain text (one input a "
        "line, a tab between the texts of a pair).",
    )
    define(flags.DEFINE_string, "output", None, "JSON-lines file of predictions to write.")
    define(
        flags.DEFINE_string,
        "encoder_path",
        None,
        "Encoder checkpoint (default: the one recorded at export).",
    )
    define(flags.DEFINE_integer, "batch_size", 32, "Rows per compiled call.")
    flags.mark_flags_as_required(["export_dir", "input", "output"], flag_values=flag_values)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    count = predict_file(
        flag_values.export_dir,
        flag_values.input,
        flag_values.output,
        flag_values.encoder_path,
        flag_values.batch_size,
    )
    logging.info("Wrote %d predictions to %s.", count, flag_values.output)


if __name__ == "__main__":
    cli.run_command(define_flags, main)
