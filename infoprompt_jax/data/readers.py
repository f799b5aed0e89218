"""Readers of the local file formats: GLUE TSVs, SemEval-2010 Task 8, ACE JSONL, plain lines.

`data.py` reads training and dev splits through `read_task_file`; `predict.py` reads input files
through the same functions (and `read_glue_columns` for GLUE files whose label column may be
absent, such as GLUE's unlabelled test.tsv). Every reader returns `Record`s, whose `line` points
back into the file, and names the file and line of anything it cannot read.

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

from infoprompt_jax.data import tasks as tasks_lib
from infoprompt_jax.data.tasks import TaskSpec

E1_OPEN, E1_CLOSE = "@ ", " @"
E2_OPEN, E2_CLOSE = "# ", " #"


@dataclasses.dataclass(frozen=True)
class Record:
    """A parsed record before label ids are assigned (`label` None where a file has none)."""

    fields: dict[str, str]
    label: str | None
    line: int  # 1-based line of the record in its file.


def read_task_file(task: TaskSpec, path: Path) -> list[Record]:
    """The labelled records of one of the task's split files, read in the task's file format."""
    reader = READERS.get(task.file_format)
    if reader is None:
        raise ValueError(
            f"task {task.name!r}: unknown file_format {task.file_format!r}; known:"
            f" {sorted(READERS)}"
        )
    return reader(path)


def read_lines(path: Path) -> list[str]:
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
class TsvFormat:
    """Column layout of one GLUE TSV format."""

    columns: tuple[str, ...]  # Names used in messages (and the header, if any).
    has_header: bool
    text: Mapping[str, int]  # Field name -> column index.
    label: int  # Label column index.
    label_map: Mapping[str, str] | None  # Raw label value -> label name.


TSV_FORMATS = {
    # RTE labels are already names; the task's label_names resolve them.
    "rte": TsvFormat(
        columns=("index", "sentence1", "sentence2", "label"),
        has_header=True,
        text={"sentence1": 1, "sentence2": 2},
        label=3,
        label_map=None,
    ),
    "mrpc": TsvFormat(
        columns=("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        has_header=True,
        text={"sentence1": 3, "sentence2": 4},
        label=0,
        label_map={"0": "not_equivalent", "1": "equivalent"},
    ),
    "cola": TsvFormat(
        columns=("source", "label", "original label", "sentence"),
        has_header=False,
        text={"sentence": 3},
        label=1,
        label_map={"0": "unacceptable", "1": "acceptable"},
    ),
    "sst2": TsvFormat(
        columns=("sentence", "label"),
        has_header=True,
        text={"sentence": 0},
        label=1,
        label_map={"0": "negative", "1": "positive"},
    ),
}


def read_glue_tsv(path: Path, fmt: TsvFormat, labelled: bool = True) -> list[Record] | None:
    """The records of a GLUE TSV.

    Args:
        path: the file.
        fmt: its task's column layout.
        labelled: True for training and dev files, which must have exactly `fmt`'s layout (a
            test.tsv or another task's file fails here instead of yielding wrong fields).
            False for prediction inputs: the header need only name the text columns, the
            label column is read where present, and a file without such a header gives None.
    """
    lines = read_lines(path)
    text_at, label_at, start = dict(fmt.text), fmt.label, 0
    columns = fmt.columns
    if fmt.has_header:
        header = tuple(c.strip() for c in lines[0].split("\t")) if lines else ()
        if labelled and header != fmt.columns:
            raise ValueError(
                f"{path} line 1: expected the header {'<TAB>'.join(fmt.columns)!r},"
                f" found {'<TAB>'.join(header)!r}"
            )
        names = {field: fmt.columns[i] for field, i in fmt.text.items()}
        if not all(name in header for name in names.values()):
            return None
        text_at = {field: header.index(name) for field, name in names.items()}
        label_name = fmt.columns[fmt.label]
        label_at = header.index(label_name) if label_name in header else None
        columns, start = header, 1
    elif not labelled:
        return None  # No header to find the columns by: the caller reads plain lines.
    records = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != len(columns):
            raise ValueError(
                f"{path} line {lineno}: expected {len(columns)} tab-separated columns"
                f" ({' '.join(columns)}), found {len(cols)}"
            )
        label = None if label_at is None else _glue_label(path, lineno, fmt, cols[label_at])
        fields = {name: cols[i].strip() for name, i in text_at.items()}
        records.append(Record(fields, label, lineno))
    return records


def _glue_label(path: Path, lineno: int, fmt: TsvFormat, value: str) -> str:
    raw = value.strip()
    if fmt.label_map is None:
        return raw
    if raw not in fmt.label_map:
        raise ValueError(
            f"{path} line {lineno}: unknown label {raw!r} in column"
            f" {fmt.columns[fmt.label]!r}; allowed: {list(fmt.label_map)}"
        )
    return fmt.label_map[raw]


def read_plain_lines(path: Path, text_fields: Sequence[str]) -> list[Record]:
    """One unlabelled record per non-blank line, its fields separated by tabs."""
    records = []
    for lineno, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        texts = line.split("\t")
        if len(texts) != len(text_fields):
            raise ValueError(
                f"{path} line {lineno}: found {len(texts)} tab-separated text(s); the task "
                f"reads {len(text_fields)} ({'<TAB>'.join(text_fields)}) per line."
            )
        records.append(Record(dict(zip(text_fields, texts)), None, lineno))
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


def read_semeval(path: Path) -> list[Record]:
    """SemEval-2010 Task 8 records: `ID<TAB>"sentence"`, the relation, a Comment line."""
    lines = read_lines(path)
    records, block = [], []
    for lineno, line in enumerate(lines + [""], start=1):
        if line.strip():
            block.append((lineno, line))
        elif block:
            records.append(_parse_semeval_record(path, block))
            block = []
    return records


def _parse_semeval_record(path: Path, block: list[tuple[int, str]]) -> Record:
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
    return Record({"sentence": sentence, "e1": e1, "e2": e2}, relation, first_line)


# ACE2005 JSONL exports.


def read_jsonl(path: Path, parse: Callable[[dict[str, Any], str], Record]) -> list[Record]:
    """One record per non-blank line of JSON objects, built by `parse(object, where)`."""
    records = []
    for lineno, line in enumerate(read_lines(path), start=1):
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


def _parse_ace_re(obj: dict[str, Any], where: str) -> Record:
    tokens = _tokens(obj, where)
    head = _span(obj, "head", len(tokens), where)
    tail = _span(obj, "tail", len(tokens), where)
    sentence = mark_spans(tokens, head, tail)
    fields = {
        "sentence": sentence,
        "head": " ".join(tokens[head[0] : head[1]]),
        "tail": " ".join(tokens[tail[0] : tail[1]]),
    }
    return Record(fields, _label(obj, where), 0)


def _parse_ace_ner(obj: dict[str, Any], where: str) -> Record:
    tokens = _tokens(obj, where)
    start, end = _span(obj, "span", len(tokens), where)
    fields = {
        "left": " ".join(tokens[:start]),
        "span": " ".join(tokens[start:end]),
        "right": " ".join(tokens[end:]),
    }
    return Record(fields, _label(obj, where), 0)


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


READERS: dict[str, Callable[[Path], list[Record]]] = {
    **{name: (lambda p, f=fmt: read_glue_tsv(p, f)) for name, fmt in TSV_FORMATS.items()},
    "semeval": read_semeval,
    "ace_re": lambda p: read_jsonl(p, _parse_ace_re),
    "ace_ner": lambda p: read_jsonl(p, _parse_ace_ner),
}
