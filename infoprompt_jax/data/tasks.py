"""What a task is: labels, verbalizers, template, metrics and where its data lives.

A task is data, not code: a frozen `TaskSpec` names the label set, one verbalizer
per label, the template string (see `templates.py` for the language), the metrics
and the sources a split can be read from. `data.py` reads the splits and
`metrics.py` scores them; neither needs per-task branches beyond the file format.

Label ids are positions in `TaskSpec.label_names`. For GLUE tasks they match the
GLUE / Hugging Face / TFDS integer labels, so predictions can be compared with
published numbers and hub labels need no remapping.

Tasks whose label set comes from the data (the ACE2005 exports, whose label
inventory depends on how the user exported the licensed corpus) are registered
with `label_names=()`. Fill them in with `data.discover_labels` (or from the
config) and `TaskSpec.with_labels`, which also derives verbalizers:

        task = get_task("ace_re")
        task = task.with_labels(data.discover_labels(task, data_dir))
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

from infoprompt_jax.data import templates

# Metric names understood by `metrics.compute_metrics`.
METRIC_NAMES = ("accuracy", "f1", "mcc", "macro_f1", "micro_f1")


# GLUE's train/dev splits as Hugging Face and TFDS name them.
_GLUE_SPLITS = (("train", "train"), ("dev", "validation"))
_GLUE_FILES = (("train", "train.tsv"), ("dev", "dev.tsv"))

_PAIR_TEMPLATE = "<s> {sentence1} {prompt} <mask> {sentence2} </s>"
_SINGLE_TEMPLATE = "<s> {sentence} {prompt} <mask> </s>"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Static description of a classification task.

    Everything is a tuple or a string so the spec is hashable (it can be a static
    argument to a jitted function) and immutable.

    Attributes:
        name: Registry key, e.g. "rte".
        label_names: Label strings; the index is the integer label id. Empty for
            tasks whose labels come from the data (see `with_labels`).
        verbalizers: One string per label, written the way the tokenizer sees a
            word mid-sentence (RoBERTa BPE: leading space, " yes"). May hold several
            words; the model averages their token embeddings.
        template: Template string: `<s>`, `</s>`, `<mask>`, `{prompt}`, `{field}` and
            literal words (see `templates.py`).
        text_fields: Names of the `Example.fields` the template reads, in template
            order.
        metrics: Metric names (subset of `METRIC_NAMES`) reported at evaluation;
            accuracy is always reported in addition.
        main_metric: The metric used for model selection and the paper's tables.
        file_format: Which local reader `data.load_split` uses: "rte", "mrpc",
            "cola", "sst2" (GLUE TSVs), "semeval" (SemEval-2010 Task 8 release
            files), "ace_re" or "ace_ner" (JSONL exports).
        local_files: (split, file name) pairs inside the task's data directory.
        hf_path: Hugging Face `datasets` id, or None when the task is local-only.
        hf_name: Hugging Face config name (e.g. "rte"), or None.
        hf_splits: (split, hub split name) pairs, e.g. ("dev", "validation").
        hf_label_column: Column that holds the integer label on the hub.
        tfds_name: TFDS dataset name (e.g. "glue/rte"), or None.
        tfds_version: The TFDS version whose features the reader expects (GLUE: "2.0.0");
            a prepared copy of the same major version is read (TFDS bumps the major version
            only when the data changes).
        negative_label: Label that means "no relation"; `micro_f1` leaves it out of
            both the predicted and the gold counts, as relation extraction does.
            Ignored when it is not one of `label_names`.
    """

    name: str
    label_names: tuple[str, ...]
    verbalizers: tuple[str, ...]
    template: str
    text_fields: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    file_format: str
    local_files: tuple[tuple[str, str], ...]
    hf_path: str | None = None
    hf_name: str | None = None
    hf_splits: tuple[tuple[str, str], ...] = ()
    hf_label_column: str = "label"
    tfds_name: str | None = None
    tfds_version: str | None = None
    negative_label: str | None = None

    def __post_init__(self):
        _check_task(self)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def local_file(self, split: str) -> str:
        """File name of `split` inside the task's data directory."""
        return _lookup(self.local_files, split, f"task {self.name!r} local_files")

    def hf_split(self, split: str) -> str:
        """Hub split name for `split` ("dev" -> "validation" for GLUE)."""
        return _lookup(self.hf_splits, split, f"task {self.name!r} hf_splits")

    def label_id(self, label: str) -> int:
        """Integer id of a label string; ValueError listing the known labels."""
        try:
            return self.label_names.index(label)
        except ValueError:
            raise ValueError(
                f"task {self.name!r}: unknown label {label!r}; known labels:"
                f" {list(self.label_names)}"
            ) from None

    def with_labels(
        self,
        label_names: Sequence[str],
        verbalizers: Sequence[str] | None = None,
    ) -> TaskSpec:
        """Returns a copy with the given label set (for labels read from data).

        Args:
            label_names: The label strings; index = label id.
            verbalizers: One per label. When None, `default_verbalizer` derives them
                from the label names (ACE type abbreviations are spelled out).

        Returns:
            A new `TaskSpec`; `self` is unchanged.
        """
        label_names = tuple(label_names)
        if verbalizers is None:
            verbalizers = tuple(default_verbalizer(name) for name in label_names)
        return dataclasses.replace(self, label_names=label_names, verbalizers=tuple(verbalizers))


def _lookup(pairs: tuple[tuple[str, str], ...], key: str, what: str) -> str:
    for k, v in pairs:
        if k == key:
            return v
    raise ValueError(
        f"{what} has no entry for split {key!r}; known splits: {[k for k, _ in pairs]}"
    )


def _check_task(task: TaskSpec) -> None:
    """Fails early on a spec that would break tokenization or scoring later."""
    where = f"task {task.name!r}"
    if len(task.verbalizers) != len(task.label_names):
        raise ValueError(
            f"{where}: {len(task.label_names)} label_names but"
            f" {len(task.verbalizers)} verbalizers; give one verbalizer per label"
        )
    if len(set(task.label_names)) != len(task.label_names):
        raise ValueError(f"{where}: label_names has duplicates: {task.label_names}")
    # Two labels with one verbalizer would start with identical class vectors.
    if len(set(task.verbalizers)) != len(task.verbalizers):
        raise ValueError(f"{where}: verbalizers has duplicates: {task.verbalizers}")
    for m in task.metrics:
        if m not in METRIC_NAMES:
            raise ValueError(f"{where}: unknown metric {m!r}; known: {METRIC_NAMES}")
    if task.main_metric not in task.metrics + ("accuracy",):
        raise ValueError(
            f"{where}: main_metric {task.main_metric!r} is not among metrics {task.metrics}"
        )
    try:
        used = templates.Template.parse(task.template).fields
    except templates.TemplateError as err:
        raise ValueError(f"{where}: {err}") from None
    if used != task.text_fields:
        raise ValueError(
            f"{where}: template fields {used} differ from text_fields"
            f" {task.text_fields}; list the template's {{field}} items in order"
        )


# Spelled-out ACE2005 type names, so a verbalizer is a word the encoder knows
# rather than an abbreviation ("GPE" -> " country"). Relation types follow the
# ACE2005 guidelines: PHYS = located/near, ART = user/owner/maker of an artifact,
# GEN-AFF = citizenship/religion/ethnicity, PER-SOC = family/business/personal.
ACE_VERBALIZERS: Mapping[str, str] = {
    # Entity types.
    "PER": " person",
    "ORG": " organization",
    "GPE": " country",
    "LOC": " location",
    "FAC": " facility",
    "VEH": " vehicle",
    "WEA": " weapon",
    # Relation types.
    "PHYS": " located in",
    "PART-WHOLE": " part of",
    "PER-SOC": " related to",
    "ORG-AFF": " affiliated with",
    "ART": " owner of",
    "GEN-AFF": " citizen of",
    # Negative labels as exports commonly spell them.
    "no_relation": " unrelated",
    "NA": " unrelated",
    "Other": " unrelated",
}


def default_verbalizer(label: str) -> str:
    """A verbalizer for a label read from data.

    Known ACE type names map through `ACE_VERBALIZERS`; anything else is split at
    punctuation and case changes into lower-case words with a leading space, e.g.
    "ORG-AFF:Employment" -> " org aff employment". Users who care about the words
    give verbalizers in the config instead.

    Args:
        label: The label string.

    Returns:
        The verbalizer string, with a leading space.
    """
    if label in ACE_VERBALIZERS:
        return ACE_VERBALIZERS[label]
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", label)
    if not words:
        raise ValueError(
            f"cannot derive a verbalizer from label {label!r}; give verbalizers explicitly"
        )
    return " " + " ".join(w.lower() for w in words)


# SemEval-2010 Task 8 labels in the Hugging Face `sem_eval_2010_task_8` order
# (9 relation types x 2 directions, then Other), so hub labels need no remapping.
# Verbalizers read as "e1 <mask> e2", i.e. they describe the relation from the
# first marked entity to the second, which is what the direction suffix means:
# `Cause-Effect(e1,e2)`: e1 causes e2; `Cause-Effect(e2,e1)`: e1 is caused by e2.
# All 19 are distinct as token sequences; pairs that share a word (" made by" /
# " used by") still differ in their first token, so the averaged embeddings differ.
SEMEVAL_RELATIONS = (
    "Cause-Effect",
    "Component-Whole",
    "Content-Container",
    "Entity-Destination",
    "Entity-Origin",
    "Instrument-Agency",
    "Member-Collection",
    "Message-Topic",
    "Product-Producer",
)
SEMEVAL_OTHER = "Other"
_SEMEVAL_VERBALIZERS = {
    "Cause-Effect(e1,e2)": " causes",
    "Cause-Effect(e2,e1)": " caused by",
    "Component-Whole(e1,e2)": " part of",
    "Component-Whole(e2,e1)": " consists of",
    "Content-Container(e1,e2)": " inside",
    "Content-Container(e2,e1)": " contains",
    "Entity-Destination(e1,e2)": " moved into",
    "Entity-Destination(e2,e1)": " destination of",
    "Entity-Origin(e1,e2)": " comes from",
    "Entity-Origin(e2,e1)": " origin of",
    "Instrument-Agency(e1,e2)": " used by",
    "Instrument-Agency(e2,e1)": " uses",
    "Member-Collection(e1,e2)": " member of",
    "Member-Collection(e2,e1)": " collection of",
    "Message-Topic(e1,e2)": " about",
    "Message-Topic(e2,e1)": " topic of",
    "Product-Producer(e1,e2)": " made by",
    "Product-Producer(e2,e1)": " makes",
    SEMEVAL_OTHER: " unrelated",
}
_SEMEVAL_DIRECTED = tuple(f"{r}({d})" for r in SEMEVAL_RELATIONS for d in ("e1,e2", "e2,e1"))
SEMEVAL_LABELS = _SEMEVAL_DIRECTED + (SEMEVAL_OTHER,)


def _glue(
    name: str,
    labels: tuple[str, ...],
    verbalizers: tuple[str, ...],
    pair: bool,
    metrics: tuple[str, ...] = ("accuracy",),
    main_metric: str = "accuracy",
) -> TaskSpec:
    """A GLUE task: local TSVs, `nyu-mll/glue` on the hub, `glue/NAME` in TFDS."""
    return TaskSpec(
        name=name,
        label_names=labels,
        verbalizers=verbalizers,
        template=_PAIR_TEMPLATE if pair else _SINGLE_TEMPLATE,
        text_fields=("sentence1", "sentence2") if pair else ("sentence",),
        metrics=metrics,
        main_metric=main_metric,
        file_format=name,
        local_files=_GLUE_FILES,
        hf_path="nyu-mll/glue",
        hf_name=name,
        hf_splits=_GLUE_SPLITS,
        tfds_name=f"glue/{name}",
        tfds_version="2.0.0",
    )


TASKS: dict[str, TaskSpec] = {
    "rte": _glue("rte", ("entailment", "not_entailment"), (" yes", " no"), pair=True),
    # GLUE's MRPC labels: 0 = not_equivalent, 1 = equivalent; F1 is over class 1. Accuracy is
    # the main metric (model selection); both are reported, as in the paper's table.
    "mrpc": _glue(
        "mrpc",
        ("not_equivalent", "equivalent"),
        (" no", " yes"),
        pair=True,
        metrics=("accuracy", "f1"),
    ),
    "cola": _glue(
        "cola",
        ("unacceptable", "acceptable"),
        (" wrong", " correct"),
        pair=False,
        metrics=("mcc",),
        main_metric="mcc",
    ),
    "sst2": _glue("sst2", ("negative", "positive"), (" terrible", " great"), pair=False),
    # The test set (with labels) serves as dev: SemEval-2010 Task 8 has no dev
    # split and papers report on the 2,717 test sentences.
    "semeval": TaskSpec(
        name="semeval",
        label_names=SEMEVAL_LABELS,
        verbalizers=tuple(_SEMEVAL_VERBALIZERS[name] for name in SEMEVAL_LABELS),
        template=_SINGLE_TEMPLATE,
        text_fields=("sentence",),
        metrics=("macro_f1",),
        main_metric="macro_f1",
        file_format="semeval",
        local_files=(("train", "TRAIN_FILE.TXT"), ("dev", "TEST_FILE_FULL.TXT")),
        hf_path="SemEvalWorkshop/sem_eval_2010_task_8",
        hf_splits=(("train", "train"), ("dev", "test")),
        hf_label_column="relation",
        negative_label=SEMEVAL_OTHER,
    ),
    # ACE2005 is licensed: local JSONL exports only (format in `data.py`).
    "ace_re": TaskSpec(
        name="ace_re",
        label_names=(),
        verbalizers=(),
        template=_SINGLE_TEMPLATE,
        text_fields=("sentence",),
        metrics=("micro_f1",),
        main_metric="micro_f1",
        file_format="ace_re",
        local_files=(("train", "train.jsonl"), ("dev", "dev.jsonl")),
        negative_label="no_relation",
    ),
    "ace_ner": TaskSpec(
        name="ace_ner",
        label_names=(),
        verbalizers=(),
        template="<s> {left} {prompt} <mask> {span} {right} </s>",
        text_fields=("left", "span", "right"),
        metrics=("micro_f1",),
        main_metric="micro_f1",
        file_format="ace_ner",
        local_files=(("train", "train.jsonl"), ("dev", "dev.jsonl")),
    ),
}


def get_task(name: str) -> TaskSpec:
    """Looks a task up by name (case-insensitive; "sst-2" works for "sst2").

    Args:
        name: Task name.

    Returns:
        The registered `TaskSpec`.

    Raises:
        KeyError: Unknown name; the message lists the known ones.
    """
    key = name.strip().lower().replace("-", "")
    if key not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[key]
