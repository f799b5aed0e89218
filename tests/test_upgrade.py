"""Runs survive an upgrade: a workdir written by release 21c5192 (tests/fixtures) is accepted as
finished by today's main, exported and analysed."""

import json
import pathlib
import shutil

import commands
import jax
import numpy as np
import pytest
import safetensors.numpy

from infoprompt_jax import config_loading, export
from infoprompt_jax.analysis import cmi
from infoprompt_jax.model import pretrained
from infoprompt_jax.model import trainable as trainable_lib
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import run_state, sharding
from infoprompt_jax.workdir import checkpointing, workdir_files

FIXTURE = pathlib.Path(__file__).resolve().parent / "fixtures" / "workdir_21c5192"
# pretrained.weights_checksum of the tiny BERT the old run trained on (tiny_models, seed 0).
ENCODER_CHECKSUM = "006d491e8e6f8557b3bebdcf19b5ca402ad2517ec005076a62384f46d30c4d9f"


@pytest.fixture
def old_run(tiny_bert_dir, tmp_path):
    """(workdir, data dir): a copy of the old run, its config pointed at this test's encoder
    and data (the paths it was written with are gone)."""
    assert pretrained.weights_checksum(tiny_bert_dir) == ENCODER_CHECKSUM, (
        "tiny_models.make_tiny_bert no longer builds the encoder the fixture trained on"
    )
    data_dir = shutil.copytree(FIXTURE / "sst2", tmp_path / "sst2")
    workdir = shutil.copytree(FIXTURE / "workdir", tmp_path / "workdir")
    config = json.loads((workdir / "config.json").read_text())
    config["model"]["name"], config["data"]["dir"] = str(tiny_bert_dir), str(data_dir)
    (workdir / "config.json").write_text(json.dumps(config, indent=2))
    return workdir, data_dir


def test_fields_added_since_read_as_the_old_behaviour(old_run):
    workdir, _ = old_run
    saved = config_loading.flatten(json.loads((workdir / "config.json").read_text()))
    config = workdir_files.load_config(workdir)
    for field, value in config_loading.ABSENT_READS_AS.items():
        if field not in saved:
            assert config_loading.flatten(config)[field] == value, field
    assert "loss.representation_negatives" not in saved
    assert config.loss.representation_negatives == "unprompted"
    assert config.train.eval_every_steps == 0
    assert list(config.length_buckets) == [16]  # Saved by the run: kept.


def test_main_accepts_the_finished_run_and_changes_nothing(old_run, tiny_bert_dir):
    workdir, data_dir = old_run
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    result = commands.run("main", *commands.tiny_run_args(tiny_bert_dir, data_dir, workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already finished" in result.stderr
    after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_export_and_cmi_read_the_old_run(old_run, tmp_path):
    workdir, _ = old_run
    output = export.export_checkpoint(str(workdir), str(tmp_path / "export"))
    info = json.loads((output / "export.json").read_text())
    assert info["step"] == 8 and info["best"]["step"] == 4
    assert info["encoder"]["weights_checksum"] == ENCODER_CHECKSUM
    # The checkpoint as the checkpoint module reads it (the two fields it lacks at 0).
    components = components_lib.build_components(workdir_files.load_config(workdir))
    target = run_state.abstract_state(
        components, run_state.sample_batch(components), sharding.replicated(sharding.make_mesh())
    )
    state, _, _ = checkpointing.read(workdir, target)
    assert int(state.diverged_at) == 0 and int(state.step) == 8
    tensors = safetensors.numpy.load_file(str(output / "params.safetensors"))
    expected = trainable_lib.flatten(jax.device_get(state.trainable))
    assert sorted(tensors) == sorted(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(tensors[path], value, err_msg=path)

    results = cmi.compute([str(workdir)], phrases=("it is great",), estimators=("trained",))
    assert list(results) == [
        ("learned: infoprompt beta=0.1 gamma=0.05", "trained"),
        ("random", "trained"),
        ('phrase: "it is great"', "trained"),
    ]
    for result in results.values():
        assert len(result.values) == 8  # The 8 dev examples.
        assert np.all(np.isfinite(result.values))
        assert result.cap == pytest.approx(np.log(4))  # log K of the run's 4 candidates.
