"""The Hugging Face and TFDS sources read for real: local hub copies through `datasets`, and
TFDS datasets prepared by TFDS's own GLUE builder, read without TensorFlow."""

import shutil
import sys

import hub_fixture
import ml_collections
import pytest

from configs import default
from infoprompt_jax import config_validation
from infoprompt_jax.data import samples, tasks
from infoprompt_jax.data import sources as data
from infoprompt_jax.train import components

SST2 = tasks.get_task("sst2")
RTE = tasks.get_task("rte")


@pytest.fixture(scope="module", autouse=True)
def own_datasets_cache(tmp_path_factory):
    """A `datasets` cache of the tests' own, never the user's ~/.cache."""
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_cache"))
        yield


@pytest.fixture(scope="module")
def hub_copy(tmp_path_factory):
    """A copy of `nyu-mll/glue` with two configs; sst2's ClassLabel order is reversed."""
    root = tmp_path_factory.mktemp("glue_hub")
    sst2 = {
        "train": {"sentence": ["a fine film ", "dull"], "label": [0, 1], "idx": [0, 1]},
        "validation": {
            "sentence": ["great", "awful", "café"],
            "label": [0, 1, 0],
            "idx": [0, 1, 2],
        },
    }
    rte = {
        "validation": {
            "sentence1": ["It rains. "],
            "sentence2": ["It is wet."],
            "label": [1],
            "idx": [0],
        }
    }
    labels = {"sst2": {"label": ["positive", "negative"]}, "rte": {"label": list(RTE.label_names)}}
    return hub_fixture.write_hub_dataset(root, {"sst2": sst2, "rte": rte}, labels)


def test_hf_path_local_copy_maps_labels_by_class_label_name(hub_copy):
    dev = data.load_split(SST2, "dev", "hf", hf_path=str(hub_copy))
    # The copy's 0 is "positive", our 1: mapped by name, not position.
    assert [(ex.fields, ex.label) for ex in dev] == [
        ({"sentence": "great"}, 1),
        ({"sentence": "awful"}, 0),
        ({"sentence": "café"}, 1),
    ]
    assert [ex.uid for ex in dev] == [f"hf:{hub_copy}/sst2:validation:{i}" for i in range(3)]
    train = data.load_split(SST2, "train", "hf", hf_path=str(hub_copy))
    assert [(ex.fields["sentence"], ex.label) for ex in train] == [("a fine film", 1), ("dull", 0)]


def test_hf_path_reads_a_pair_task_from_its_own_config(hub_copy):
    (ex,) = data.load_split(RTE, "dev", "hf", hf_path=str(hub_copy))
    assert (ex.fields, ex.label) == ({"sentence1": "It rains.", "sentence2": "It is wet."}, 1)
    assert ex.uid == f"hf:{hub_copy}/rte:validation:0"


def test_hf_path_two_copies_of_one_name_and_a_changed_copy_read_their_own_rows(tmp_path):
    def copy(where, sentences):
        split = {"sentence": sentences, "label": [1] * len(sentences)}
        return hub_fixture.write_hub_dataset(
            tmp_path / where / "glue", {"sst2": {"validation": split}}
        )

    def sentences(root):
        return [
            ex.fields["sentence"] for ex in data.load_split(SST2, "dev", "hf", hf_path=str(root))
        ]

    first, second = copy("a", ["one", "two"]), copy("b", ["three"])
    assert (sentences(first), sentences(second)) == (["one", "two"], ["three"])
    copy("a", ["changed", "rows", "here"])  # Re-staged in place: read anew, not from the cache.
    assert sentences(first) == ["changed", "rows", "here"]


@pytest.mark.parametrize("labels", [[1, 0], ["positive", "negative"]])
def test_hf_path_without_class_labels_reads_integers_in_task_order_and_names(tmp_path, labels):
    split = {"sentence": ["good", "bad"], "label": labels}
    root = hub_fixture.write_hub_dataset(tmp_path / "plain", {"sst2": {"validation": split}})
    dev = data.load_split(SST2, "dev", "hf", hf_path=str(root))
    assert [(ex.fields["sentence"], ex.label) for ex in dev] == [("good", 1), ("bad", 0)]


def test_hf_path_semeval_default_config_marks_entities(tmp_path):
    semeval = tasks.get_task("semeval")
    sentence = "The <e1>child</e1> in the <e2>cradle</e2>."
    root = hub_fixture.write_hub_dataset(
        tmp_path / "semeval",
        {"default": {"test": {"sentence": [sentence], "relation": [18]}}},
        {"default": {"relation": list(reversed(tasks.SEMEVAL_LABELS))}},
    )
    (ex,) = data.load_split(semeval, "dev", "hf", hf_path=str(root))
    assert ex.fields == {
        "sentence": "The @ child @ in the # cradle #.",
        "e1": "child",
        "e2": "cradle",
    }
    # Index 18 of the reversed names is the first of ours.
    assert semeval.label_names[ex.label] == tasks.SEMEVAL_LABELS[0]


def test_hf_path_the_shipped_sample_reads_as_the_local_files(tmp_path):
    root = hub_fixture.write_sst2_hub_copy(tmp_path / "glue", samples.sample_dir("reviews"))
    for split in ("train", "dev"):
        hub = data.load_split(SST2, split, "hf", hf_path=str(root))
        local = data.load_split(SST2, split, "local", samples.sample_dir("reviews"))
        assert [(ex.fields, ex.label) for ex in hub] == [(ex.fields, ex.label) for ex in local]


@pytest.mark.parametrize(
    "task, configs, match",
    [
        (
            SST2,
            {"rte": {"validation": {"sentence1": ["a"], "sentence2": ["b"], "label": [0]}}},
            r"holds the dataset configs \['rte'\], not 'sst2' that task 'sst2' reads; add it: "
            r"hf download nyu-mll/glue --repo-type dataset --local-dir .* --include 'sst2/\*'",
        ),
        (
            SST2,
            {"sst2": {"train": {"sentence": ["a"], "label": [0]}}},
            r"config 'sst2' has the splits \['train'\], not 'validation' that task 'sst2' reads",
        ),
        (
            SST2,
            {"sst2": {"validation": {"text": ["a"], "label": [0]}}},
            r"has the columns \['text', 'label'\], not \['sentence'\], which task 'sst2' reads",
        ),
        (
            RTE,
            {"rte": {"validation": {"sentence1": ["a"], "label": [0]}}},
            r"has the columns \['sentence1', 'label'\], not \['sentence2'\]",
        ),
    ],
)
def test_hf_path_bad_copy_is_one_line_naming_it_and_the_fix(tmp_path, task, configs, match):
    root = hub_fixture.write_hub_dataset(tmp_path / "copy", configs)
    with pytest.raises(ValueError, match=match) as err:
        data.load_split(task, "dev", "hf", hf_path=str(root))
    assert "\n" not in str(err.value) and str(root) in str(err.value)


def test_hf_path_that_is_a_missing_folder_says_so(tmp_path):
    with pytest.raises(ValueError, match=r"hf_path=/\S+/nowhere: no such directory; give a local"):
        data.load_split(SST2, "dev", "hf", hf_path=str(tmp_path / "nowhere"))


def test_hf_path_folder_that_is_no_dataset_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a Hugging Face dataset folder"):
        data.load_split(SST2, "dev", "hf", hf_path=str(tmp_path / "empty"))


# ----------------------------------------------------------------------------
# TFDS: GLUE prepared by TFDS's own builder and writer.


def glue_download(root, train_rows, dev_rows):
    """A folder laid out as TFDS's GLUE download extracts: `SST-2/{train,dev,test}.tsv`."""
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(train_rows), encoding="utf-8")
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + "".join(dev_rows), encoding="utf-8")
    (folder / "test.tsv").write_text("index\tsentence\n0\tunlabelled\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tfds_sst2(tmp_path_factory):
    """TFDS's glue/sst2 prepared from the first 40 train and 30 dev rows of the shipped sample."""
    root = tmp_path_factory.mktemp("tfds")
    sample = samples.sample_dir("reviews")
    train = (sample / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[1:41]
    dev = (sample / "dev.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[1:31]
    glue_download(root / "download", train, dev)
    (root / "expected").mkdir()
    (root / "expected/train.tsv").write_text("sentence\tlabel\n" + "".join(train))
    (root / "expected/dev.tsv").write_text("sentence\tlabel\n" + "".join(dev))
    hub_fixture.write_tfds_glue(root / "data", "sst2", root / "download")
    return root


def tfds_config(data_dir) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.task = "sst2"
    config.data.source = "tfds"
    config.data.dir = str(data_dir)
    return config


@pytest.mark.parametrize("split", ["train", "dev"])
def test_tfds_prepared_glue_reads_every_field_and_label(tfds_sst2, split):
    config = tfds_config(tfds_sst2 / "data")
    examples = components.load_whole_split(config, SST2, split)
    expected = data.load_split(SST2, split, "local", tfds_sst2 / "expected")

    # TFDS shuffles rows when it writes them: compare as multisets of (fields, label).
    def key(ex):
        return (ex.fields["sentence"], ex.label)

    assert sorted(map(key, examples)) == sorted(map(key, expected))
    assert all(set(ex.fields) == {"sentence"} for ex in examples)
    assert {ex.label for ex in examples} == {0, 1}
    tfds_split = SST2.hf_split(split)
    assert [ex.uid for ex in examples] == [
        f"tfds:glue/sst2:{tfds_split}:{i}" for i in range(len(examples))
    ]
    assert "tensorflow" not in sys.modules  # Read without TensorFlow.


def test_tfds_data_dir_of_another_dataset_says_which_it_holds(tfds_sst2):
    with pytest.raises(
        ValueError, match=r"has no prepared glue/rte \(it holds \['glue/sst2'\]\)"
    ) as err:
        data.load_split(RTE, "dev", "tfds", tfds_sst2 / "data")
    assert "\n" not in str(err.value)
    assert "download_and_prepare()" in str(err.value)


def test_tfds_data_dir_of_another_version_names_the_versions(tfds_sst2, tmp_path):
    other = tmp_path / "tfds/glue/sst2/1.0.0"
    shutil.copytree(tfds_sst2 / "data/glue/sst2/2.0.0", other)
    with pytest.raises(ValueError, match=r"holds the versions \['1.0.0'\], not 2.x.x \(2.0.0\)"):
        data.load_split(SST2, "dev", "tfds", tmp_path / "tfds")


def test_tfds_features_without_a_template_field_are_refused(tmp_path):
    root = glue_download(tmp_path / "download", ["a\t1\n"], ["b\t0\n"])
    hub_fixture.write_tfds_glue(tmp_path / "data", "sst2", root)
    # SST-2's features under RTE's folder: RTE's template needs sentence1 and sentence2.
    (tmp_path / "data/glue/sst2").rename(tmp_path / "data/glue/rte")
    with pytest.raises(ValueError, match=r"not \['sentence1', 'sentence2'\], which task 'rte'"):
        data.load_split(RTE, "dev", "tfds", tmp_path / "data")


def test_hf_path_with_another_source_is_refused_before_any_work():
    config = default.get_config()
    config.data.source = "local"
    config.data.hf_path = "glue_hub"
    with pytest.raises(ValueError) as err:
        config_validation.validate(config)
    assert str(err.value) == (
        "config.data.hf_path='glue_hub' is read by the Hugging Face source only, and"
        " config.data.source='local': add --config.data.source=hf, or drop the hf_path."
    )


def test_tfds_prepared_glue_pair_task_reads_both_fields_and_labels(tmp_path):
    rows = [
        'The cat sat. \t"A cat" sat down.\tentailment\n',
        "Rain fell all day.\tIt was dry.\tnot_entailment\n",
        "Paris is in France.\tParis is French.\tentailment\n",
    ]
    header = "index\tsentence1\tsentence2\tlabel\n"
    glue = tmp_path / "download/RTE"
    glue.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (glue / name).write_text(header + "".join(f"{i}\t{r}" for i, r in enumerate(rows)))
    (glue / "test.tsv").write_text("index\tsentence1\tsentence2\n0\ta\tb\n")
    hub_fixture.write_tfds_glue(tmp_path / "data", "rte", tmp_path / "download")
    examples = data.load_split(RTE, "dev", "tfds", tmp_path / "data")
    expected = data.load_split(RTE, "dev", "local", glue)
    assert sorted(
        (ex.fields["sentence1"], ex.fields["sentence2"], ex.label) for ex in examples
    ) == [
        ("Paris is in France.", "Paris is French.", 0),
        ("Rain fell all day.", "It was dry.", 1),
        ("The cat sat.", '"A cat" sat down.', 0),
    ]
    assert sorted(map(lambda ex: (ex.fields, ex.label), examples), key=str) == sorted(
        map(lambda ex: (ex.fields, ex.label), expected), key=str
    )
