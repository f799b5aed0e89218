"""Reading task splits (local files, Hugging Face datasets, TFDS) and few-shot subsets.

Every reader returns a list of `Example`: the text fields the task's template
reads, an integer label (index into `TaskSpec.label_names`) and a uid that points
back to the source (`file:line` for local files, `source:split:index` otherwise).

Local formats, one directory per task (`--config.data.dir=DIR`):

* GLUE TSVs `DIR/train.tsv`, `DIR/dev.tsv` as the GLUE download script writes
    them, read with quoting disabled (GLUE text holds unbalanced quotes) and a
    UTF-8 BOM stripped:
    - RTE: header `index sentence1 sentence2 label`, labels `entailment` /
        `not_entailment`;
    - MRPC: header `Quality #1 ID #2 ID #1 String #2 String` (BOM), label = Quality;
    - CoLA: no header, columns `source label original_label sentence`;
    - SST-2: header `sentence label`; GLUE's trailing space before the tab is
        stripped.
* SemEval-2010 Task 8 release files `DIR/TRAIN_FILE.TXT` (train) and
    `DIR/TEST_FILE_FULL.TXT` (dev): blank-line separated records of three lines,
    `ID<TAB>"sentence with <e1>..</e1> and <e2>..</e2>"`, the relation, `Comment: ..`.
* ACE2005 JSONL exports `DIR/train.jsonl`, `DIR/dev.jsonl`, one JSON object a line.
    Token spans are `[start, end)` token indices, end exclusive:
    - relation extraction (`ace_re`):
        `{"tokens": ["He", "lives", "in", "Paris"], "head": [0, 1], "tail": [3, 4],
        "label": "PHYS"}`;
    - entity typing (`ace_ner`):
        `{"tokens": ["He", "lives", "in", "Paris"], "span": [3, 4], "label": "GPE"}`.
    Other keys are ignored. Blank lines are skipped.

Entity markers (SemEval and ACE RE). The first entity (SemEval `e1`, ACE `head`)
is wrapped in `@ ... @`, the second (`e2`, `tail`) in `# ... #`, with spaces, e.g.
`The @ child @ was wrapped into the # cradle #.`: plain punctuation that both
RoBERTa BPE and BERT WordPiece keep as single known tokens, so no tokenizer
change or new embedding is needed (the "typed entity marker (punct)" idea of
Zhou & Chen, 2021, untyped). Using two symbols keeps the direction (e1 vs e2)
visible to the model, which the directed labels need. Whitespace is then
collapsed to single spaces.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infoprompt_jax import tasks as tasks_lib
from infoprompt_jax.tasks import TaskSpec

SPLITS = ("train", "dev")
SOURCES = ("local", "hf", "tfds")

E1_OPEN, E1_CLOSE = "@ ", " @"
E2_OPEN, E2_CLOSE = "# ", " #"


@dataclasses.dataclass(frozen=True)
class Example:
    """One labelled input.

    Attributes:
        fields: Text fields by name (the template's `{field}` items); treat as
            read-only.
        label: Integer label, an index into `TaskSpec.label_names`.
        uid: Where it came from: `file:line` or `source:split:index`.
    """

    fields: Mapping[str, str]
    label: int
    uid: str


def load_split(
    task: TaskSpec,
    split: str,
    source: str = "local",
    data_dir: str | Path | None = None,
    label_names: Sequence[str] | None = None,
) -> list[Example]:
    """Reads one split of a task.

    Args:
        task: The task.
        split: "train" or "dev" (GLUE dev = the hub's "validation"; SemEval dev =
            the labelled test file).
        source: "local" (files in `data_dir`), "hf" (Hugging Face `datasets`) or
            "tfds" (TensorFlow Datasets).
        data_dir: The task's directory for source "local"; for "tfds" an optional
            TFDS data_dir; unused for "hf".
        label_names: Label set overriding `task.label_names`. Tasks registered
            with no labels (ACE) otherwise discover them from the train file in
            `data_dir` (`discover_labels`), so train and dev share one id mapping.

    Returns:
        The examples in source order.

    Raises:
        ValueError: Bad arguments or a malformed file (the message names the file,
            the line and what was expected).
        FileNotFoundError: A missing local file.
        RuntimeError: The hub / TFDS could not be reached or has no such dataset.
        ImportError: source "tfds" without tensorflow_datasets installed.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    names = tuple(label_names) if label_names is not None else task.label_names
    if source == "local":
        if data_dir is None:
            raise ValueError(
                f"task {task.name!r}: source 'local' needs a data directory; set"
                f" --config.data.dir=DIR with {_expected_files(task)}"
            )
        if not names:
            names = discover_labels(task, data_dir)
        return _load_local(task, split, Path(data_dir), names)
    if source == "hf":
        return _load_hf(task, split, names)
    return _load_tfds(task, split, names, data_dir)


def discover_labels(task: TaskSpec, data_dir: str | Path) -> tuple[str, ...]:
    """The label set found in a task's local train file.

    Sorted, with `task.negative_label` (e.g. "no_relation") first when present so
    that id 0 means "no relation" as in most RE code. Use it with
    `TaskSpec.with_labels` for tasks registered with `label_names=()`.

    Args:
        task: The task (its local train file is read).
        data_dir: The task's data directory.

    Returns:
        The label strings; index = label id.
    """
    path = _local_path(task, "train", Path(data_dir))
    labels = {rec.label for rec in _read_raw(task, path)}
    if not labels:
        raise ValueError(f"{path}: no examples, so no labels to discover")
    neg = task.negative_label
    rest = sorted(labels - {neg})
    return ((neg,) if neg in labels else ()) + tuple(rest)


def few_shot_subset(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """Draws the few-shot training set.

    A plain (not class-balanced) uniform draw of `n` distinct examples with
    `numpy.random.default_rng(seed)`. It depends only on the examples, `n` and
    `seed`, so every method sees the same subset at a given seed. The subset keeps
    the source order (the training loop shuffles).

    Args:
        examples: The full split.
        n: Subset size; 0 means all examples.
        seed: Seed of the draw (the run's seed).

    Returns:
        The subset (a new list).
    """
    if n < 0:
        raise ValueError(f"few-shot size must be >= 0 (0 = all), got {n}")
    if n == 0:
        return list(examples)
    if n > len(examples):
        raise ValueError(
            f"few-shot size {n} exceeds the {len(examples)} available examples;"
            " lower it or use 0 for all"
        )
    idx = np.random.default_rng(seed).choice(len(examples), size=n, replace=False)
    return [examples[i] for i in np.sort(idx)]


# ----------------------------------------------------------------------------
# Local files.


@dataclasses.dataclass(frozen=True)
class _Raw:
    """A parsed record before label ids are assigned."""

    fields: dict[str, str]
    label: str
    line: int  # 1-based line of the record in its file.


def _load_local(task: TaskSpec, split: str, data_dir: Path, names: Sequence[str]) -> list[Example]:
    path = _local_path(task, split, data_dir)
    ids = {name: i for i, name in enumerate(names)}
    examples = []
    for rec in _read_raw(task, path):
        if rec.label not in ids:
            raise ValueError(
                f"{path} line {rec.line}: unknown label {rec.label!r}; allowed: {list(names)}"
            )
        examples.append(Example(rec.fields, ids[rec.label], f"{path.name}:{rec.line}"))
    return examples


def _expected_files(task: TaskSpec) -> str:
    files = " and ".join(f for _, f in task.local_files)
    return f"the files {files} directly inside DIR"


def _local_path(task: TaskSpec, split: str, data_dir: Path) -> Path:
    path = data_dir / task.local_file(split)
    if not path.is_file():
        raise FileNotFoundError(
            f"task {task.name!r} split {split!r}: {path} not found; the data"
            f" directory (--config.data.dir) must hold {_expected_files(task)}"
        )
    return path


def _read_raw(task: TaskSpec, path: Path) -> list[_Raw]:
    reader = _READERS.get(task.file_format)
    if reader is None:
        raise ValueError(
            f"task {task.name!r}: unknown file_format {task.file_format!r}; known:"
            f" {sorted(_READERS)}"
        )
    return reader(path)


def _read_lines(path: Path) -> list[str]:
    """The file's lines, BOM stripped, without line terminators.

    Splits on "\\n" only (and drops a trailing "\\r"), unlike `str.splitlines`,
    which would also break rows at Unicode separators that can occur inside text.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # The final newline.
    return lines


# GLUE TSVs.


@dataclasses.dataclass(frozen=True)
class _TsvFormat:
    """Column layout of one GLUE TSV format."""

    columns: tuple[str, ...]  # Names used in messages (and the header, if any).
    has_header: bool
    text: Mapping[str, int]  # Field name -> column index.
    label: int  # Label column index.
    label_map: Mapping[str, str] | None  # Raw label value -> label name.


_TSV_FORMATS = {
    # RTE labels are already names; the task's label_names resolve them.
    "rte": _TsvFormat(
        columns=("index", "sentence1", "sentence2", "label"),
        has_header=True,
        text={"sentence1": 1, "sentence2": 2},
        label=3,
        label_map=None,
    ),
    "mrpc": _TsvFormat(
        columns=("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        has_header=True,
        text={"sentence1": 3, "sentence2": 4},
        label=0,
        label_map={"0": "not_equivalent", "1": "equivalent"},
    ),
    "cola": _TsvFormat(
        columns=("source", "label", "original label", "sentence"),
        has_header=False,
        text={"sentence": 3},
        label=1,
        label_map={"0": "unacceptable", "1": "acceptable"},
    ),
    "sst2": _TsvFormat(
        columns=("sentence", "label"),
        has_header=True,
        text={"sentence": 0},
        label=1,
        label_map={"0": "negative", "1": "positive"},
    ),
}


def _read_tsv(path: Path, fmt: _TsvFormat) -> list[_Raw]:
    lines = _read_lines(path)
    layout = " ".join(fmt.columns)
    ncol = len(fmt.columns)
    start = 0
    if fmt.has_header:
        # Check the header so a test.tsv (no label column) or a file of another
        # task fails here instead of yielding wrong fields.
        header = tuple(c.strip() for c in lines[0].split("\t")) if lines else ()
        if header != fmt.columns:
            raise ValueError(
                f"{path} line 1: expected the header {'<TAB>'.join(fmt.columns)!r},"
                f" found {'<TAB>'.join(header)!r}"
            )
        start = 1
    records = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != ncol:
            raise ValueError(
                f"{path} line {lineno}: expected {ncol} tab-separated columns"
                f" ({layout}), found {len(cols)}"
            )
        raw = cols[fmt.label].strip()
        if fmt.label_map is None:
            label = raw
        elif raw in fmt.label_map:
            label = fmt.label_map[raw]
        else:
            raise ValueError(
                f"{path} line {lineno}: unknown label {raw!r} in column"
                f" {fmt.columns[fmt.label]!r}; allowed: {list(fmt.label_map)}"
            )
        fields = {name: cols[i].strip() for name, i in fmt.text.items()}
        records.append(_Raw(fields, label, lineno))
    return records


# SemEval-2010 Task 8.

_SEMEVAL_LABELS = frozenset(tasks_lib.SEMEVAL_LABELS)


def semeval_markers(sentence: str) -> tuple[str, str, str]:
    """Replaces SemEval's `<e1>..</e1>`/`<e2>..</e2>` tags with `@ .. @`/`# .. #`.

    Args:
        sentence: The sentence with exactly one of each tag, each entity tagged
            once (`<e1>`, `</e1>`, `<e2>`, `</e2>`).

    Returns:
        (marked sentence, e1 text, e2 text), whitespace collapsed.

    Raises:
        ValueError: A tag is missing, repeated or out of order (message says which).
    """
    for tag in ("<e1>", "</e1>", "<e2>", "</e2>"):
        if sentence.count(tag) != 1:
            raise ValueError(f"expected one {tag} tag, found {sentence.count(tag)}")
    if not (
        sentence.index("<e1>") < sentence.index("</e1>")
        and sentence.index("<e2>") < sentence.index("</e2>")
    ):
        raise ValueError("an entity's closing tag comes before its opening tag")
    e1 = re.search(r"<e1>(.*?)</e1>", sentence, re.S).group(1)
    e2 = re.search(r"<e2>(.*?)</e2>", sentence, re.S).group(1)
    if "<e2>" in e1 or "<e1>" in e2:
        raise ValueError("entity tags are nested")
    if not e1.strip() or not e2.strip():
        raise ValueError("an entity is empty")
    marked = (
        sentence.replace("<e1>", E1_OPEN)
        .replace("</e1>", E1_CLOSE)
        .replace("<e2>", E2_OPEN)
        .replace("</e2>", E2_CLOSE)
    )
    return _squash(marked), _squash(e1), _squash(e2)


def _squash(text: str) -> str:
    return " ".join(text.split())


def _read_semeval(path: Path) -> list[_Raw]:
    lines = _read_lines(path)
    records, block = [], []
    for lineno, line in enumerate(lines + [""], start=1):
        if line.strip():
            block.append((lineno, line))
        elif block:
            records.append(_parse_semeval_record(path, block))
            block = []
    return records


def _parse_semeval_record(path: Path, block: list[tuple[int, str]]) -> _Raw:
    first_line, first = block[0]
    # Without a tab the id is still the leading number, if there is one.
    match = re.match(r"\s*(\d+)", first)
    if "\t" in first:
        rec_id = first.split("\t", 1)[0].strip()
    else:
        rec_id = match.group(1) if match else "?"

    def fail(lineno: int, what: str) -> ValueError:
        return ValueError(f"{path} line {lineno} (record id {rec_id}): {what}")

    if "\t" not in first:
        raise fail(first_line, 'expected `ID<TAB>"sentence"`, found no tab')
    if not rec_id.isdigit():
        raise fail(first_line, f"expected a numeric record id, found {rec_id!r}")
    quoted = first.split("\t", 1)[1].strip()
    if len(quoted) < 2 or not (quoted.startswith('"') and quoted.endswith('"')):
        raise fail(first_line, "expected the sentence in double quotes")
    try:
        sentence, e1, e2 = semeval_markers(quoted[1:-1])
    except ValueError as err:
        raise fail(first_line, f"bad entity markers: {err}") from None
    if len(block) < 2:
        raise fail(first_line, "missing the relation line after the sentence")
    rel_line, relation = block[1]
    relation = relation.strip()
    if relation not in _SEMEVAL_LABELS:
        raise fail(
            rel_line,
            f"unknown relation {relation!r}; allowed: Other or one of"
            f" {list(tasks_lib.SEMEVAL_RELATIONS)} with (e1,e2) or (e2,e1)",
        )
    if len(block) < 3 or not block[2][1].lstrip().startswith("Comment:"):
        lineno = block[2][0] if len(block) >= 3 else rel_line + 1
        raise fail(lineno, "expected a `Comment:` line after the relation")
    if len(block) > 3:
        raise fail(
            block[3][0],
            "expected a blank line after the Comment line (records are 3 lines)",
        )
    return _Raw({"sentence": sentence, "e1": e1, "e2": e2}, relation, first_line)


# ACE2005 JSONL exports.


def _read_jsonl(path: Path, parse: Callable[[dict[str, Any], str], _Raw]) -> list[_Raw]:
    records = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, found {type(obj).__name__}")
        records.append(dataclasses.replace(parse(obj, where), line=lineno))
    return records


def _tokens(obj: dict[str, Any], where: str) -> list[str]:
    tokens = obj.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{where}: 'tokens' must be a non-empty list of strings")
    return tokens


def _span(obj: dict[str, Any], key: str, n: int, where: str) -> tuple[int, int]:
    span = obj.get(key)
    ok = (
        isinstance(span, list)
        and len(span) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in span)
    )
    if not ok or not 0 <= span[0] < span[1] <= n:
        raise ValueError(
            f"{where}: {key!r} must be [start, end) token indices with"
            f" 0 <= start < end <= {n} (the number of tokens), found {span!r}"
        )
    return span[0], span[1]


def _label(obj: dict[str, Any], where: str) -> str:
    label = obj.get("label")
    if not isinstance(label, str) or not label:
        raise ValueError(f"{where}: 'label' must be a non-empty string, found {label!r}")
    return label


def _parse_ace_re(obj: dict[str, Any], where: str) -> _Raw:
    tokens = _tokens(obj, where)
    head = _span(obj, "head", len(tokens), where)
    tail = _span(obj, "tail", len(tokens), where)
    sentence = mark_spans(tokens, head, tail)
    fields = {
        "sentence": sentence,
        "head": " ".join(tokens[head[0] : head[1]]),
        "tail": " ".join(tokens[tail[0] : tail[1]]),
    }
    return _Raw(fields, _label(obj, where), 0)


def _parse_ace_ner(obj: dict[str, Any], where: str) -> _Raw:
    tokens = _tokens(obj, where)
    start, end = _span(obj, "span", len(tokens), where)
    fields = {
        "left": " ".join(tokens[:start]),
        "span": " ".join(tokens[start:end]),
        "right": " ".join(tokens[end:]),
    }
    return _Raw(fields, _label(obj, where), 0)


def mark_spans(tokens: Sequence[str], head: tuple[int, int], tail: tuple[int, int]) -> str:
    """Joins tokens with `@ .. @` around head and `# .. #` around tail.

    Nested spans (ACE has e.g. "[[U.S.] officials]") nest their markers: at one
    position the longer span opens first and closes last. Crossing spans are
    marked as given.

    Args:
        tokens: The sentence tokens.
        head: [start, end) of the first entity.
        tail: [start, end) of the second entity.

    Returns:
        The marked sentence, tokens separated by single spaces.
    """
    # (start, end, order, open marker, close marker); `order` breaks ties so that identical
    # spans still nest: head opens first and closes last.
    spans = [
        (*head, 0, E1_OPEN.strip(), E1_CLOSE.strip()),
        (*tail, 1, E2_OPEN.strip(), E2_CLOSE.strip()),
    ]
    out = []
    for i, tok in enumerate(tokens):
        # Outer (longer) span opens first ...
        opening = sorted((s for s in spans if s[0] == i), key=lambda s: (-s[1], s[2]))
        out.extend(s[3] for s in opening)
        out.append(tok)
        # ... and closes last.
        closing = sorted((s for s in spans if s[1] == i + 1), key=lambda s: (-s[0], -s[2]))
        out.extend(s[4] for s in closing)
    return " ".join(out)


_READERS: dict[str, Callable[[Path], list[_Raw]]] = {
    **{name: (lambda p, f=fmt: _read_tsv(p, f)) for name, fmt in _TSV_FORMATS.items()},
    "semeval": _read_semeval,
    "ace_re": lambda p: _read_jsonl(p, _parse_ace_re),
    "ace_ner": lambda p: _read_jsonl(p, _parse_ace_ner),
}


# ----------------------------------------------------------------------------
# Hugging Face datasets and TFDS.


def _offline_help(task: TaskSpec) -> str:
    return f"pass --config.data.source=local --config.data.dir=DIR with {_expected_files(task)}"


def _hub_fields(task: TaskSpec, row: Mapping[str, Any]) -> dict[str, str]:
    """The task's text fields from one hub/TFDS row (bytes decoded)."""

    def text(key):
        value = row[key]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    if task.file_format == "semeval":
        sentence, e1, e2 = semeval_markers(text("sentence"))
        return {"sentence": sentence, "e1": e1, "e2": e2}
    return {f: text(f).strip() for f in task.text_fields}


def _require_labels(task: TaskSpec, names: Sequence[str]) -> None:
    if not names:
        raise ValueError(f"task {task.name!r} takes its labels from the data; pass label_names")


def _label_ids(
    task: TaskSpec, source_names: Sequence[str] | None, names: Sequence[str]
) -> dict[int, int]:
    """Maps the source's integer labels to ours by label name.

    Hub and TFDS GLUE labels use the same order as ours, but mapping by name
    guards against a dataset revision that reorders its ClassLabel.
    """
    if source_names is None:
        return {i: i for i in range(len(names))}
    ours = {n: i for i, n in enumerate(names)}
    missing = [n for n in source_names if n not in ours]
    if missing:
        raise ValueError(
            f"task {task.name!r}: the dataset's labels {missing} are not among the"
            f" task's labels {list(names)}"
        )
    return {i: ours[n] for i, n in enumerate(source_names)}


def _rows_to_examples(task, rows, label_names, names, uid_prefix):
    ids = _label_ids(task, label_names, names)
    examples = []
    for i, row in enumerate(rows):
        raw = int(row[task.hf_label_column])
        if raw not in ids:
            raise ValueError(
                f"{uid_prefix}:{i}: label {raw} outside the task's"
                f" {len(names)} labels (unlabelled test split?)"
            )
        examples.append(Example(_hub_fields(task, row), ids[raw], f"{uid_prefix}:{i}"))
    return examples


def _load_hf(task: TaskSpec, split: str, names: Sequence[str]) -> list[Example]:
    if task.hf_path is None:
        raise ValueError(
            f"task {task.name!r} has no Hugging Face dataset; read local files:"
            f" {_offline_help(task)}"
        )
    _require_labels(task, names)
    import datasets  # Lazy: only this source needs it.

    hub_split = task.hf_split(split)
    dataset_id = f"{task.hf_path}" + (f"/{task.hf_name}" if task.hf_name else "")
    try:
        ds = datasets.load_dataset(task.hf_path, task.hf_name, split=hub_split)
    except Exception as err:  # Offline, not cached, or blocked: all look alike.
        raise RuntimeError(
            f"could not load {dataset_id} split {hub_split!r} from the Hugging Face"
            f" hub (no network access and not in the local cache?): {err}."
            f" To read local files instead, {_offline_help(task)}"
        ) from err
    feature = ds.features.get(task.hf_label_column)
    source_names = getattr(feature, "names", None)
    return _rows_to_examples(task, ds, source_names, names, f"hf:{dataset_id}:{hub_split}")


def _load_tfds(task: TaskSpec, split: str, names: Sequence[str], data_dir) -> list[Example]:
    if task.tfds_name is None:
        raise ValueError(
            f"task {task.name!r} has no TFDS dataset; read local files: {_offline_help(task)}"
        )
    _require_labels(task, names)
    try:
        import tensorflow_datasets as tfds  # Lazy: an optional, heavy dependency.
    except ImportError as err:
        raise ImportError(
            "source 'tfds' needs tensorflow_datasets: pip install"
            f' "infoprompt_jax[tfds]"; or read local files: {_offline_help(task)}'
        ) from err
    tfds_split = task.hf_split(split)  # TFDS GLUE splits are named like the hub's.
    try:
        ds, info = tfds.load(task.tfds_name, split=tfds_split, data_dir=data_dir, with_info=True)
    except Exception as err:
        raise RuntimeError(
            f"could not load TFDS {task.tfds_name} split {tfds_split!r} (no network"
            f" access and not prepared in the TFDS data_dir?): {err}."
            f" To read local files instead, {_offline_help(task)}"
        ) from err
    feature = info.features[task.hf_label_column]
    source_names = getattr(feature, "names", None)
    return _rows_to_examples(
        task,
        tfds.as_numpy(ds),
        source_names,
        names,
        f"tfds:{task.tfds_name}:{tfds_split}",
    )
