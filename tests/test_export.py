"""Tests of export and prediction: a trained run, exported and reloaded, predicts as in training."""

import contextlib
import json
import os
import shutil
import stat

import commands
import jax
import numpy as np
import pytest
import safetensors.numpy
import sentiment_fixture

from infoprompt_jax import export, predict
from infoprompt_jax.data import readers, tasks
from infoprompt_jax.model import pretrained
from infoprompt_jax.model import trainable as trainable_lib
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import evaluation, run_state, sharding
from infoprompt_jax.train import loop as train
from infoprompt_jax.workdir import checkpointing, workdir_files

NUM_DEV = 12  # Not a multiple of the batch sizes, so both paths pad their last batch.


def write_sst2_data(directory, num_train: int):
    """SST-2 files: `num_train` training rows, and NUM_DEV dev rows that start 3 examples on."""
    directory.mkdir()
    sentiment_fixture.write_sst2_tsv(directory / "train.tsv", sentiment_fixture.examples(num_train))
    sentiment_fixture.write_sst2_tsv(
        directory / "dev.tsv", sentiment_fixture.examples(NUM_DEV + 3)[3:]
    )
    return directory


@contextlib.contextmanager
def recorded_eval_logits():
    """Yields a list that collects every `evaluation.Evaluator.logits` result while the block
    runs: the training loop's own dev evaluations, the reference an export must reproduce."""
    logits, evaluator_logits = [], evaluation.Evaluator.logits

    def recording_logits(self, *args):
        outputs = evaluator_logits(self, *args)
        # A separate run trains as a stack of one: its logits are [N, 1, C].
        logits.append(outputs[:, 0] if outputs.ndim == 3 else outputs)
        return outputs

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation.Evaluator, "logits", recording_logits)
        yield logits


@pytest.fixture(scope="module")
def trained(tiny_roberta_dir, tmp_path_factory):
    """The tiny SST-2 run, trained for 2 epochs (4 steps), and what its loop computed.

    Returns:
        (workdir, data dir, {step: trainable params saved}, the last dev evaluation's logits),
        the last two recorded from inside `train_and_evaluate`: the reference predictions are
        the training loop's own, not a recomputation.
    """
    root = tmp_path_factory.mktemp("export")
    data_dir = write_sst2_data(root / "sst2", num_train=24)
    config = sentiment_fixture.tiny_config(tiny_roberta_dir)
    config.data.dir = str(data_dir)
    workdir = root / "workdir"
    saved, save = {}, checkpointing.save

    def recording_save(manager, step, state, record):
        saved[step] = jax.tree.map(np.array, jax.device_get(state.trainable))
        save(manager, step, state, record)

    with recorded_eval_logits() as eval_logits, pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpointing, "save", recording_save)
        train.train_and_evaluate(config, str(workdir))
    assert sorted(saved) == [2, 4] and len(eval_logits) == 2, (
        "train_and_evaluate should save at steps 2 and 4 through checkpointing.save and evaluate "
        "twice through evaluation.Evaluator.logits; update this recording if the loop changed."
    )
    return workdir, data_dir, saved, eval_logits[-1]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The latest checkpoint's export, written by the command line."""
    workdir = trained[0]
    output = tmp_path_factory.mktemp("e") / "sst2"
    commands.run_in_process(export, [f"--workdir={workdir}", f"--output={output}"])
    return output


def dev_rows(data_dir):
    """(sentence, gold label id) of the dev file."""
    rows = [line.split("\t") for line in (data_dir / "dev.tsv").read_text().splitlines()[1:]]
    return [(sentence.strip(), int(label)) for sentence, label in rows]


def eval_records(workdir):
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in metrics if "eval_accuracy" in m]


def test_export_writes_trainable_params_config_and_identity(trained, exported, tiny_roberta_dir):
    workdir, _, saved, _ = trained
    assert sorted(p.name for p in exported.iterdir()) == [
        "config.json",
        "export.json",
        "params.safetensors",
        "tokenizer",
    ]
    tensors = safetensors.numpy.load_file(str(exported / "params.safetensors"))
    trainable = trainable_lib.flatten(saved[4])
    assert sorted(tensors) == sorted(trainable)
    assert not [p for p in tensors if p.startswith("encoder/") or "mlm_transform" in p]
    for path, value in trainable.items():
        assert tensors[path].dtype == np.float32
        np.testing.assert_array_equal(tensors[path], value, err_msg=path)
    info = json.loads((exported / "export.json").read_text())
    evals = eval_records(workdir)
    best = max(evals, key=lambda m: m["eval_accuracy"])  # The first of equals, as training.
    assert info["format_version"] == export.FORMAT_VERSION
    assert info["task"] == {
        "name": "sst2",
        "label_names": ["negative", "positive"],
        "text_fields": ["sentence"],
    }
    assert (info["method"], info["step"]) == ("infoprompt", 4)
    assert info["encoder"] == {
        "name": str(tiny_roberta_dir),
        "model_dir": str(tiny_roberta_dir.absolute()),
        "weights_checksum": pretrained.weights_checksum(tiny_roberta_dir),
    }
    assert info["best"] == {
        "metric": "eval_accuracy",
        "score": best["eval_accuracy"],
        "step": best["step"],
    }
    assert info["eval_metrics_at_step"]["eval_accuracy"] == evals[-1]["eval_accuracy"]
    assert info["params"]["num_parameters"] == sum(v.size for v in tensors.values())
    assert json.loads((exported / "config.json").read_text()) == json.loads(
        (workdir / "config.json").read_text()
    )


def test_export_files_are_readable_by_other_users(exported):
    umask = os.umask(0)
    os.umask(umask)
    paths = [exported, *exported.rglob("*")]
    modes = {p.relative_to(exported).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in paths}
    expected = {name: (0o777 if (exported / name).is_dir() else 0o666) & ~umask for name in modes}
    assert modes == expected  # 0644 files and 0755 folders under the usual umask 022.


def test_loaded_classifier_predicts_as_the_training_eval(trained, exported):
    workdir, data_dir, _, reference_logits = trained
    sentences, gold = zip(*dev_rows(data_dir))
    # Batch 32 pads the 12 rows differently from training's batches of 8: same predictions.
    results = predict.InfoPromptClassifier.load(exported).predict(list(sentences))
    probabilities = np.array(
        [[r["probabilities"][n] for n in ("negative", "positive")] for r in results]
    )
    np.testing.assert_allclose(probabilities, predict.softmax(reference_logits), rtol=1e-5)
    label_ids = np.array([r["label_id"] for r in results])
    np.testing.assert_array_equal(label_ids, reference_logits.argmax(-1))
    assert [r["label"] for r in results] == [("negative", "positive")[i] for i in label_ids]
    assert np.mean(label_ids == gold) == eval_records(workdir)[-1]["eval_accuracy"]


def test_predict_command_line_on_the_dev_file(trained, exported, tmp_path):
    _, data_dir, _, reference_logits = trained
    commands.run_in_process(
        predict,
        [
            f"--export_dir={exported}",
            f"--input={data_dir / 'dev.tsv'}",
            f"--output={tmp_path / 'out.jsonl'}",
            "--batch_size=8",
        ],
    )
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    sentences, gold = zip(*dev_rows(data_dir))
    assert [r["input"] for r in records] == [{"sentence": s} for s in sentences]
    assert [r["line"] for r in records] == list(range(2, NUM_DEV + 2))
    assert [r["gold"] for r in records] == [("negative", "positive")[i] for i in gold]
    np.testing.assert_array_equal([r["label_id"] for r in records], reference_logits.argmax(-1))
    probabilities = np.array(
        [[r["probabilities"]["negative"], r["probabilities"]["positive"]] for r in records]
    )
    np.testing.assert_allclose(probabilities, predict.softmax(reference_logits), rtol=1e-5)


def test_export_of_an_earlier_step(trained, tmp_path):
    workdir, _, saved, _ = trained
    early = export.export_checkpoint(str(workdir), str(tmp_path / "e2"), step=2)
    assert json.loads((early / "export.json").read_text())["step"] == 2
    tensors = safetensors.numpy.load_file(str(early / "params.safetensors"))
    for path, value in trainable_lib.flatten(saved[2]).items():
        np.testing.assert_array_equal(tensors[path], value, err_msg=path)
    with pytest.raises(ValueError, match=r"--step=3: .* steps \[2, 4\]"):
        export.export_checkpoint(str(workdir), str(tmp_path / "e3"), step=3)


def test_export_of_a_checkpoint_from_before_divergence_tracking(trained, tmp_path):
    """An older version's checkpoint lacks the state's diverged_at and diverged_loss: export
    reads it through the checkpoint module, as resume does, and writes the same params."""
    workdir, _, saved, _ = trained
    components = components_lib.build_components(workdir_files.load_config(workdir))
    target = run_state.abstract_state(
        components, run_state.sample_batch(components), sharding.replicated(sharding.make_mesh())
    )
    state, record, step = checkpointing.read(workdir, target)
    assert step == 4
    old_workdir = tmp_path / "old"
    older = {name: getattr(state, name) for name in ("step", "trainable", "opt_state", "rng")}
    checkpointing.save(checkpointing.make_manager(old_workdir), step, older, record)
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(workdir / name, old_workdir / name)
    output = export.export_checkpoint(str(old_workdir), str(tmp_path / "e"))
    assert json.loads((output / "export.json").read_text())["step"] == 4
    tensors = safetensors.numpy.load_file(str(output / "params.safetensors"))
    expected = trainable_lib.flatten(saved[4])
    assert sorted(tensors) == sorted(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(tensors[path], value, err_msg=path)


def test_loading_against_another_encoder_is_refused(exported, tiny_roberta_dir, tmp_path):
    other = shutil.copytree(tiny_roberta_dir, tmp_path / "other_encoder")
    weights = safetensors.numpy.load_file(str(other / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + np.asarray(1e-3, weights[name].dtype)
    safetensors.numpy.save_file(
        weights, str(other / "model.safetensors"), metadata={"format": "pt"}
    )
    expected = json.loads((exported / "export.json").read_text())["encoder"]["weights_checksum"]
    found = pretrained.weights_checksum(other)
    with pytest.raises(ValueError, match="Encoder mismatch") as error:
        predict.InfoPromptClassifier.load(exported, encoder_path=str(other))
    message = str(error.value)
    assert str(other) in message and expected in message and found in message
    assert "encoder_path=" in message and "--encoder_path" in message


def test_export_of_a_workdir_without_checkpoint_names_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"No checkpoint in {tmp_path / 'empty'}"):
        export.export_checkpoint(str(tmp_path / "empty"), str(tmp_path / "out"))
    (tmp_path / "empty" / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no complete step"):
        export.export_checkpoint(str(tmp_path / "empty"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def rte_classifier(tiny_roberta_dir, tmp_path_factory):
    """An untrained RTE (pair task) export, loaded."""
    config = sentiment_fixture.tiny_config(tiny_roberta_dir)
    config.task = "rte"
    components = components_lib.build_components(config)
    # Random values in the trained tree's shapes: `init_params` would compile the whole init.
    rng = np.random.default_rng(0)
    trainable = jax.tree.map(
        lambda x: rng.normal(0.0, 0.1, x.shape).astype(np.float32),
        run_state.abstract_state(
            components,
            run_state.sample_batch(components),
            sharding.replicated(sharding.make_mesh()),
        ).trainable,
    )
    directory = export.write_export(tmp_path_factory.mktemp("rte") / "e", components, trainable, 0)
    return predict.InfoPromptClassifier.load(directory)


def test_pair_task_takes_pairs_and_names_the_arity(rte_classifier):
    assert rte_classifier.text_fields == ("sentence1", "sentence2")
    with pytest.raises(
        ValueError,
        match=r"Input 1 is 'just one'.*2 text field\(s\) "
        r"\['sentence1', 'sentence2'\].*tuple of 2 strings",
    ):
        rte_classifier.predict([("a man", "a person"), "just one"])
    with pytest.raises(ValueError, match="Input 0 is"):
        rte_classifier.predict([("a", "b", "c")])
    with pytest.raises(ValueError, match=r"lacks the field\(s\) \['sentence2'\]"):
        rte_classifier.predict([{"sentence1": "a"}])
    with pytest.raises(TypeError, match="wrap a single input in a list"):
        rte_classifier.predict("a man walks")
    # Not text at all: a TypeError naming the input's index and the types it takes.
    with pytest.raises(TypeError, match=r"^Input 1 is None of type NoneType; task 'rte' reads 2"):
        rte_classifier.predict([("a", "b"), None])
    with pytest.raises(TypeError, match=r"^Input 0 is 5 of type int; .*or a dict with those keys"):
        rte_classifier.predict([5])
    with pytest.raises(TypeError, match=r"^Input 0 is \('a', 5\), not all strings"):
        rte_classifier.predict([("a", 5)])
    pairs = rte_classifier.predict([("a man walks", "a man moves"), ("it is dull", "it is fun")])
    dicts = rte_classifier.predict(
        [
            {"sentence1": "a man walks", "sentence2": "a man moves"},
            {"sentence1": "it is dull", "sentence2": "it is fun"},
        ]
    )
    assert pairs == dicts
    for result in pairs:
        assert set(result["probabilities"]) == {"entailment", "not_entailment"}
        assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    assert rte_classifier.predict([]) == []


def test_input_files_glue_test_tsv_and_plain_text(tmp_path):
    rte = tasks.get_task("rte")
    fields = rte.text_fields
    test_tsv = tmp_path / "test.tsv"
    test_tsv.write_text("index\tsentence1\tsentence2\n0\tA man walks.\tA man moves.\n")
    rows = predict.read_inputs(test_tsv, rte, fields)
    assert rows == [
        readers.Record({"sentence1": "A man walks.", "sentence2": "A man moves."}, None, 2)
    ]
    plain = tmp_path / "pairs.txt"
    plain.write_text("a\tb\n\nc\td\n")
    assert [(r.fields["sentence2"], r.line) for r in predict.read_inputs(plain, rte, fields)] == [
        ("b", 1),
        ("d", 3),
    ]
    plain.write_text("a\tb\nno tab here\n")
    with pytest.raises(ValueError, match=r"pairs.txt line 2: found 1 tab-separated"):
        predict.read_inputs(plain, rte, fields)


@pytest.mark.parametrize(
    "method, trained_prefixes",
    [
        ("idpg", {"prompt_generator/", "task_head/"}),
        ("warp", {"prompt", "task_head/"}),
        ("adapter", {"encoder/", "task_head/"}),
        ("finetune", {"encoder/", "task_head/"}),
    ],
)
def test_every_method_exports_and_predicts_as_its_training_eval(
    method, trained_prefixes, tiny_roberta_dir, tmp_path
):
    data_dir = write_sst2_data(tmp_path / "sst2", num_train=16)
    config = sentiment_fixture.tiny_config(tiny_roberta_dir, method)
    config.data.dir = str(data_dir)
    config.train.num_epochs = 1
    with recorded_eval_logits() as eval_logits:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    output = export.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "export"))
    tensors = safetensors.numpy.load_file(str(output / "params.safetensors"))
    assert not [name for name in tensors if not name.startswith(tuple(trained_prefixes))]
    for prefix in trained_prefixes:
        assert any(name.startswith(prefix) for name in tensors), (prefix, sorted(tensors))
    if method == "adapter":  # The adapters, not the frozen encoder weights around them.
        assert all("/adapter/" in name for name in tensors if name.startswith("encoder/"))
    # summary.json counts exactly the parameters that trained, which are what the export holds.
    counts = json.loads((tmp_path / "run" / "summary.json").read_text())["trainable_params"]
    assert counts["trainable"] == sum(t.size for t in tensors.values())
    classifier = predict.InfoPromptClassifier.load(output)
    sentences, _ = zip(*dev_rows(data_dir))
    logits = classifier.predict_logits(list(sentences), batch_size=4)
    np.testing.assert_array_equal(logits.argmax(-1), eval_logits[-1].argmax(-1))
    np.testing.assert_allclose(predict.softmax(logits), predict.softmax(eval_logits[-1]), rtol=1e-5)
