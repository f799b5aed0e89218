"""Tests for tasks.py and data.py: every local format, its errors, real GLUE files."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import shared_data

from infoprompt_jax.data import readers, tasks
from infoprompt_jax.data import sources as data


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # newline="" so "\r\n" in `text` reaches the file unchanged.
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        f.write(text)
    return path


# ----------------------------------------------------------------------------
# tasks.py


def test_registry_has_all_tasks_with_consistent_specs():
    assert set(tasks.TASKS) == {"rte", "mrpc", "cola", "sst2", "semeval", "ace_re", "ace_ner"}
    for task in tasks.TASKS.values():
        assert len(task.verbalizers) == len(task.label_names)
        assert all(v.startswith(" ") for v in task.verbalizers)
        assert task.main_metric in task.metrics + ("accuracy",)
    assert tasks.get_task("rte").label_names == ("entailment", "not_entailment")
    assert tasks.get_task("mrpc").verbalizers == (" no", " yes")
    assert tasks.get_task("mrpc").metrics == ("accuracy", "f1")
    assert tasks.get_task("cola").main_metric == "mcc"
    assert tasks.get_task("SST-2") is tasks.TASKS["sst2"]
    assert tasks.get_task("rte").hf_split("dev") == "validation"


def test_semeval_labels_are_19_directed_plus_other():
    task = tasks.get_task("semeval")
    assert task.num_labels == 19
    assert task.label_names[-1] == "Other"
    assert task.label_names[:2] == ("Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)")
    assert len(set(task.verbalizers)) == 19


def test_get_task_unknown_lists_known_names():
    with pytest.raises(KeyError, match="known tasks: ace_ner, ace_re, cola"):
        tasks.get_task("qnli")


def test_task_spec_rejects_inconsistent_fields():
    rte = tasks.get_task("rte")
    with pytest.raises(ValueError, match="2 label_names but 1 verbalizers"):
        rte.with_labels(("a", "b"), (" a",))
    with pytest.raises(ValueError, match="differ from text_fields"):
        dataclasses.replace(rte, text_fields=("sentence",))
    with pytest.raises(ValueError, match="0 <mask> items; it needs exactly one"):
        dataclasses.replace(rte, template="<s> {sentence1} {prompt} {sentence2} </s>")


def test_with_labels_derives_verbalizers():
    task = tasks.get_task("ace_re").with_labels(("no_relation", "ORG-AFF", "PHYS.Located"))
    assert task.verbalizers == (" unrelated", " affiliated with", " phys located")
    assert tasks.get_task("ace_re").label_names == ()  # The registry is unchanged.


# ----------------------------------------------------------------------------
# GLUE TSVs.


def test_rte_with_quotes(tmp_path):
    # GLUE text has unbalanced quotes: csv's default quoting would merge rows.
    write(
        tmp_path / "train.tsv",
        "index\tsentence1\tsentence2\tlabel\n"
        '0\tHe said "hello.\tHe spoke.\tentailment\n'
        '1\t"Quoted" start\tNo quote"\tnot_entailment\n',
    )
    ex = data.load_split(tasks.get_task("rte"), "train", "local", tmp_path)
    assert [e.label for e in ex] == [0, 1]
    assert ex[0].fields == {"sentence1": 'He said "hello.', "sentence2": "He spoke."}
    assert ex[1].fields["sentence2"] == 'No quote"'
    assert ex[1].uid == "train.tsv:3"


def test_mrpc_with_bom(tmp_path):
    write(
        tmp_path / "dev.tsv",
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t702876\t702977\tAmrozi accused his brother .\tReferring to him .\n"
        "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought it .\n",
        bom=True,
    )
    ex = data.load_split(tasks.get_task("mrpc"), "dev", "local", tmp_path)
    assert [e.label for e in ex] == [1, 0]
    assert ex[0].fields == {
        "sentence1": "Amrozi accused his brother .",
        "sentence2": "Referring to him .",
    }


def test_cola_no_header(tmp_path):
    write(
        tmp_path / "train.tsv",
        "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n",
    )
    ex = data.load_split(tasks.get_task("cola"), "train", "local", tmp_path)
    assert [e.label for e in ex] == [1, 0]
    assert ex[1].fields == {"sentence": "They drank the pub."}
    assert ex[0].uid == "train.tsv:1"


def test_sst2_trailing_space_stripped(tmp_path):
    write(
        tmp_path / "dev.tsv",
        "sentence\tlabel\nit 's a charming journey . \t1\nbleak and desperate \t0\n",
    )
    ex = data.load_split(tasks.get_task("sst2"), "dev", "local", tmp_path)
    assert [(e.fields["sentence"], e.label) for e in ex] == [
        ("it 's a charming journey .", 1),
        ("bleak and desperate", 0),
    ]


def test_tsv_wrong_column_count_names_file_and_line(tmp_path):
    path = write(
        tmp_path / "train.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly two\tentailment\n",
    )
    with pytest.raises(ValueError) as err:
        data.load_split(tasks.get_task("rte"), "train", "local", tmp_path)
    assert str(err.value) == (
        f"{path} line 3: expected 4 tab-separated columns"
        " (index sentence1 sentence2 label), found 3"
    )


def test_tsv_unknown_label_names_file_line_value_and_allowed(tmp_path):
    path = write(
        tmp_path / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n"
    )
    with pytest.raises(ValueError) as err:
        data.load_split(tasks.get_task("rte"), "train", "local", tmp_path)
    msg = str(err.value)
    assert f"{path} line 2" in msg and "'contradiction'" in msg
    assert "['entailment', 'not_entailment']" in msg
    write(tmp_path / "dev.tsv", "sentence\tlabel\ngood \t2\n")
    with pytest.raises(ValueError, match=r"dev.tsv line 2: unknown label '2'.*\['0', '1'\]"):
        data.load_split(tasks.get_task("sst2"), "dev", "local", tmp_path)


def test_tsv_wrong_header(tmp_path):
    # GLUE's test.tsv has no label column; reading it as dev must fail loudly.
    write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\n0\ta\tb\n")
    with pytest.raises(ValueError, match="dev.tsv line 1: expected the header"):
        data.load_split(tasks.get_task("rte"), "dev", "local", tmp_path)


def test_missing_file_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.load_split(tasks.get_task("rte"), "dev", "local", tmp_path)
    assert str(tmp_path / "dev.tsv") in str(err.value)
    assert "train.tsv and dev.tsv directly inside DIR" in str(err.value)


def test_bad_split_and_source():
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_split(tasks.get_task("rte"), "test", "local", "/nonexistent")
    with pytest.raises(ValueError, match="source must be one of"):
        data.load_split(tasks.get_task("rte"), "dev", "s3", "/nonexistent")


# ----------------------------------------------------------------------------
# Real GLUE files (../shared/data/glue).


@shared_data.requires_shared(shared_data.GLUE_DIR)
@pytest.mark.parametrize(
    "task_name,folder,counts",
    [
        ("rte", "RTE", {"train": 2490, "dev": 277}),
        ("sst2", "SST-2", {"train": 67349, "dev": 872}),
    ],
)
def test_real_glue_files(task_name, folder, counts):
    task = tasks.get_task(task_name)
    for split, n in counts.items():
        ex = data.load_split(task, split, "local", shared_data.GLUE_DIR / folder)
        assert len(ex) == n
        assert {e.label for e in ex} == {0, 1}
        assert all(e.fields[f] for e in ex for f in task.text_fields)
    if task_name == "sst2":
        assert ex[0].fields["sentence"] == "it 's a charming and often affecting journey ."
        assert ex[0].label == 1
    else:
        assert ex[0].fields["sentence2"] == "Christopher Reeve had an accident."
        assert ex[0].label == 1  # not_entailment


# ----------------------------------------------------------------------------
# SemEval-2010 Task 8.

SEMEVAL = (
    '1\t"The system as described above has its greatest application in an'
    ' arrayed <e1>configuration</e1> of antenna <e2>elements</e2>."\r\n'
    "Component-Whole(e2,e1)\r\n"
    "Comment: Not a collection: there is structure here, organisation.\r\n"
    "\r\n"
    '2\t"The <e1>child</e1> was carefully wrapped and bound into the'
    ' <e2>cradle</e2> by means of a cord."\r\n'
    "Other\r\n"
    "Comment:\r\n"
    "\r\n"
    '3\t"The <e1>author</e1> of a keygen uses a <e2>disassembler</e2> to look'
    ' at the raw assembly code."\r\n'
    "Instrument-Agency(e2,e1)\r\n"
    "Comment:\r\n"
    "\r\n"
)


def test_semeval_records_with_crlf(tmp_path):
    write(tmp_path / "TRAIN_FILE.TXT", SEMEVAL)
    task = tasks.get_task("semeval")
    ex = data.load_split(task, "train", "local", tmp_path)
    assert [task.label_names[e.label] for e in ex] == [
        "Component-Whole(e2,e1)",
        "Other",
        "Instrument-Agency(e2,e1)",
    ]
    assert ex[1].fields == {
        "sentence": "The @ child @ was carefully wrapped and bound into the"
        " # cradle # by means of a cord.",
        "e1": "child",
        "e2": "cradle",
    }
    assert ex[0].fields["sentence"].endswith("@ configuration @ of antenna # elements #.")
    assert [e.uid for e in ex] == ["TRAIN_FILE.TXT:1", "TRAIN_FILE.TXT:5", "TRAIN_FILE.TXT:9"]
    # The same file with "\n" endings and no final blank line parses the same.
    write(tmp_path / "TEST_FILE_FULL.TXT", SEMEVAL.replace("\r\n", "\n").rstrip("\n"))
    dev = data.load_split(task, "dev", "local", tmp_path)
    assert [(e.fields, e.label) for e in dev] == [(e.fields, e.label) for e in ex]


@pytest.mark.parametrize(
    "old,new,line,what",
    [
        ('3\t"The', '3 "The', 9, "found no tab"),
        ('"The <e1>author', "The <e1>author", 9, "in double quotes"),
        ("<e2>cradle</e2>", "cradle", 5, "expected one <e2> tag, found 0"),
        ("Instrument-Agency(e2,e1)", "Instrument-Agency", 10, "unknown relation"),
        ("Other\r\nComment:\r\n", "Other\r\n", 7, "expected a `Comment:` line"),
    ],
)
def test_semeval_malformed_record(tmp_path, old, new, line, what):
    assert old in SEMEVAL
    path = write(tmp_path / "TRAIN_FILE.TXT", SEMEVAL.replace(old, new, 1))
    with pytest.raises(ValueError) as err:
        data.load_split(tasks.get_task("semeval"), "train", "local", tmp_path)
    rec_id = {9: 3, 10: 3, 5: 2, 7: 2}[line]
    assert f"{path} line {line} (record id {rec_id}): " in str(err.value)
    assert what in str(err.value)


# ----------------------------------------------------------------------------
# ACE JSONL exports.


def test_ace_re_jsonl_and_discovered_labels(tmp_path):
    rows = [
        {
            "tokens": ["He", "lives", "in", "Paris", "."],
            "head": [0, 1],
            "tail": [3, 4],
            "label": "PHYS",
        },
        {
            "tokens": ["U.S.", "officials", "met"],
            "head": [0, 2],
            "tail": [0, 1],
            "label": "PART-WHOLE",
            "extra": 1,
        },
        {"tokens": ["a", "b"], "head": [1, 2], "tail": [0, 1], "label": "no_relation"},
    ]
    write(tmp_path / "train.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    task = tasks.get_task("ace_re")
    names = data.discover_labels(task, tmp_path)
    assert names == ("no_relation", "PART-WHOLE", "PHYS")  # Negative first.
    ex = data.load_split(task, "train", "local", tmp_path)
    assert [e.label for e in ex] == [2, 1, 0]
    assert ex[0].fields == {
        "sentence": "@ He @ lives in # Paris # .",
        "head": "He",
        "tail": "Paris",
    }
    # Nested spans nest their markers: the outer (head) opens first.
    assert ex[1].fields["sentence"] == "@ # U.S. # officials @ met"
    assert ex[2].fields["sentence"] == "# a # @ b @"
    assert readers.mark_spans(["x", "y"], (0, 1), (0, 1)) == "@ # x # @ y"
    assert readers.mark_spans(["x", "y"], (0, 2), (1, 2)) == "@ x # y # @"


def test_ace_ner_jsonl(tmp_path):
    write(
        tmp_path / "dev.jsonl",
        json.dumps({"tokens": ["He", "lives", "in", "Paris"], "span": [3, 4], "label": "GPE"})
        + "\n",
    )
    ex = data.load_split(
        tasks.get_task("ace_ner"), "dev", "local", tmp_path, label_names=("GPE", "PER")
    )
    assert ex[0].fields == {"left": "He lives in", "span": "Paris", "right": ""}
    assert ex[0].label == 0


@pytest.mark.parametrize(
    "line,what",
    [
        ('{"tokens": ["a"], "span": [0, 1], "label": "PER"', "not valid JSON"),
        ('{"tokens": ["a"], "span": [0, 2], "label": "PER"}', "'span' must be [start, end)"),
        ('{"tokens": ["a"], "span": [1, 1], "label": "PER"}', "found [1, 1]"),
        ('{"tokens": [], "span": [0, 1], "label": "PER"}', "'tokens' must be"),
        ('{"tokens": ["a"], "span": [0, 1]}', "'label' must be"),
    ],
)
def test_ace_bad_line_names_file_and_line(tmp_path, line, what):
    good = json.dumps({"tokens": ["a"], "span": [0, 1], "label": "PER"})
    path = write(tmp_path / "train.jsonl", f"{good}\n{line}\n")
    with pytest.raises(ValueError) as err:
        data.load_split(tasks.get_task("ace_ner"), "train", "local", tmp_path, label_names=("PER",))
    assert str(err.value).startswith(f"{path} line 2: ")
    assert what in str(err.value)


def test_ace_dev_label_not_in_train(tmp_path):
    write(
        tmp_path / "train.jsonl",
        json.dumps({"tokens": ["a"], "span": [0, 1], "label": "PER"}) + "\n",
    )
    path = write(
        tmp_path / "dev.jsonl", json.dumps({"tokens": ["a"], "span": [0, 1], "label": "ORG"}) + "\n"
    )
    with pytest.raises(
        ValueError, match=rf"{path} line 1: unknown label 'ORG'; allowed: \['PER'\]"
    ):
        data.load_split(tasks.get_task("ace_ner"), "dev", "local", tmp_path)


# ----------------------------------------------------------------------------
# Few-shot subsets.


def _examples(n):
    return [data.Example({"sentence": str(i)}, i % 2, f"f:{i}") for i in range(n)]


def test_few_shot_subset_deterministic_distinct_and_seeded():
    ex = _examples(500)
    a = data.few_shot_subset(ex, 64, seed=0)
    b = data.few_shot_subset(ex, 64, seed=0)
    c = data.few_shot_subset(ex, 64, seed=1)
    assert [e.uid for e in a] == [e.uid for e in b]
    assert [e.uid for e in a] != [e.uid for e in c]
    assert len({e.uid for e in a}) == 64
    assert data.few_shot_subset(ex, 0, seed=3) == ex
    with pytest.raises(ValueError, match="few-shot size 501 exceeds the 500"):
        data.few_shot_subset(ex, 501, seed=0)


# ----------------------------------------------------------------------------
# Hub sources, offline.


def test_hf_offline_raises_helpful_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf/datasets"))
    import datasets
    import huggingface_hub

    # Both libraries read the variables at import; patch the parsed values too.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf/datasets", raising=False
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(RuntimeError) as err:
        data.load_split(tasks.get_task("rte"), "dev", "hf")
    msg = str(err.value)
    assert "could not load nyu-mll/glue/rte split 'validation'" in msg
    # One line, naming both fixes: a local copy of the hub dataset, or local GLUE files.
    assert "\n" not in msg
    assert (
        "--config.data.hf_path=DIR (hf download nyu-mll/glue --repo-type dataset"
        " --local-dir DIR)" in msg
    )
    assert "--config.data.source=local --config.data.dir=DIR" in msg
    assert "train.tsv and dev.tsv" in msg


def test_tfds_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # Import fails.
    with pytest.raises(ImportError, match=r'pip install "infoprompt_jax\[tfds\]"'):
        data.load_split(tasks.get_task("sst2"), "dev", "tfds")


def test_local_only_task_on_hub_says_so():
    with pytest.raises(ValueError, match="has no Hugging Face dataset"):
        data.load_split(tasks.get_task("ace_re"), "dev", "hf")
