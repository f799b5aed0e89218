"""Faults and bad input: each class fails with one message naming what and how to fix it."""

import json
import shutil
import subprocess
import sys

import commands
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import sentiment_fixture

from infoprompt_jax import config_validation, predict
from infoprompt_jax.analysis import runs as analysis_runs
from infoprompt_jax.data import sources as data
from infoprompt_jax.data import tasks
from infoprompt_jax.model import pretrained, safetensors_file
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.workdir import checkpointing, run_dir, workdir_files


def test_divergence_stops_at_its_step_and_keeps_the_last_good_checkpoint(
    tiny_roberta_dir, tmp_path
):
    data_dir = sentiment_fixture.write_sst2(tmp_path / "data", 32, 16)
    workdir = tmp_path / "run"
    args = commands.tiny_run_args(
        tiny_roberta_dir,
        data_dir,
        workdir,
        "--config.optim.lr=1e9",
        "--config.train.log_every_steps=10",
        "--config.train.checkpoint_every_steps=1",
    )
    first = commands.run("main", *args)
    assert first.returncode == 1, first.stderr
    error = first.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: Training diverged at step "), error
    step = int(error.split("at step ")[1].split(":")[0])
    assert f"keeps the checkpoint of step {step - 1}" in error
    assert "start a new --workdir with a lower config.optim.lr (now 1e+09)" in error
    # Nothing non-finite was saved, logged or summarised.
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] == step - 1
    assert not (workdir / "summary.json").exists()
    metrics = workdir / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        record = json.loads(line)  # Bare NaN would not be valid JSON to a strict reader.
        assert all(v == v for v in record.values() if isinstance(v, float)), record
    # The rerun resumes from the last good step and stops at the same step, not silently.
    second = commands.run("main", *args)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == error


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.batch_size=0",
            "config.train.batch_size=0: it is examples per step; give an integer >= 1.",
        ),
        (
            "train.eval_batch_size=-1",
            "config.train.eval_batch_size=-1: it is dev examples per compiled call; give an integer >= 1.",
        ),
        (
            "train.log_every_steps=0",
            "config.train.log_every_steps=0: it is steps between train-metric records; give an integer >= 1.",
        ),
        (
            "train.eval_every_epochs=0",
            "config.train.eval_every_epochs=0: it is epochs between evaluations; give an integer >= 1.",
        ),
        (
            "train.checkpoint_every_steps=-1",
            "config.train.checkpoint_every_steps=-1: it is steps between checkpoints (0: every epoch end); give an integer >= 0.",
        ),
        (
            "train.keep_checkpoints=0",
            "config.train.keep_checkpoints=0: it is checkpoints kept (0 would leave nothing to resume or export); give an integer >= 1.",
        ),
        (
            "data.max_eval_examples=-10",
            "config.data.max_eval_examples=-10: it is dev examples (0: all); give an integer >= 0.",
        ),
        ("seed=-1", "config.seed=-1: it is the run's seed; give an integer >= 0."),
        ("optim.lr=0", "config.optim.lr=0.0: give a learning rate > 0."),
    ],
)
def test_bad_config_values_are_refused_before_any_work(override, message):
    config = sentiment_fixture.tiny_config("/nonexistent/model")
    field, value = override.split("=")
    *sections, name = field.split(".")
    target = config
    for section in sections:
        target = target[section]
    target[name] = type(target[name])(value)
    with pytest.raises(ValueError) as error:
        config_validation.validate(config)
    assert str(error.value) == message


def test_bad_eval_length_buckets_are_refused_before_any_work():
    config = sentiment_fixture.tiny_config("/nonexistent/model")
    config.train.eval_length_buckets = (0, 8)
    with pytest.raises(
        ValueError, match=r"^config.train.eval_length_buckets=\(0, 8\): every bucket"
    ):
        config_validation.validate(config)


def test_in_batch_negatives_need_a_batch_of_two():
    config = sentiment_fixture.tiny_config("/nonexistent/model")
    config.loss.representation_negatives = "other_prompts"
    config.train.batch_size = 1
    with pytest.raises(ValueError, match="give a batch_size >= 2"):
        config_validation.validate(config)


def test_a_bad_value_fails_the_command_in_one_line_before_the_encoder_loads(tmp_path):
    result = commands.run(
        "main",
        *commands.tiny_run_args(
            tmp_path / "no_model",
            tmp_path / "no_data",
            tmp_path / "run",
            "--config.train.log_every_steps=0",
        ),
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: config.train.log_every_steps=0: it is steps between train-metric records; "
        "give an integer >= 1."
    )
    assert "Loading the" not in result.stderr


def test_a_max_len_that_leaves_no_text_warns(caplog):
    config = sentiment_fixture.tiny_config("/nonexistent/model")
    config.max_len = 8
    config_validation.validate(config)
    assert "config.max_len=8 leaves room for a token or two of text" in caplog.text


@pytest.fixture(scope="module")
def finished_run(tiny_roberta_dir, tmp_path_factory):
    """A finished tiny run with checkpoints at steps 4, 6 and 8; tests copy it before changing it."""
    root = tmp_path_factory.mktemp("finished")
    data_dir = sentiment_fixture.write_sst2(root / "data", 32, 16)
    args = commands.tiny_run_args(
        tiny_roberta_dir,
        data_dir,
        root / "run",
        "--config.train.checkpoint_every_steps=2",
        "--config.train.keep_checkpoints=3",
    )
    result = commands.run("main", *args)
    assert result.returncode == 0, result.stderr
    return root / "run", args


def copy_run(finished_run, tmp_path):
    workdir, args = finished_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return copy, [f"--workdir={copy}" if a.startswith("--workdir=") else a for a in args]


def test_a_workdir_refuses_another_config_even_when_finished(finished_run, tmp_path):
    workdir, args = copy_run(finished_run, tmp_path)
    result = commands.run("main", *args, "--config.optim.lr=0.0003", "--config.seed=3")
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: {workdir} holds a run of another config (")
    assert "optim.lr: 0.001 -> 0.0003; seed: 0 -> 3)" in error
    assert "A workdir is one run: give this config a new --workdir" in error
    assert "Only reporting fields may change on resume: cache_unprompted, log_prompt_every" in error


def test_reporting_fields_may_change_on_resume(finished_run, tmp_path):
    workdir, args = copy_run(finished_run, tmp_path)
    (workdir / "summary.json").unlink()  # Unfinished again: it resumes from step 8.
    result = commands.run("main", *args, "--config.train.log_every_steps=3")
    assert result.returncode == 0, result.stderr
    assert "with other reporting fields (train.log_every_steps: 1 -> 3)" in result.stderr


def test_a_second_process_on_a_workdir_refuses_and_a_killed_one_leaves_no_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
        env=commands.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RuntimeError) as error:
        run_dir.RunLock(tmp_path)
    assert str(error.value) == (
        f"Another process is training in {tmp_path} (it holds {tmp_path}/.lock); wait for it "
        "to finish or stop it, or give this run another --workdir."
    )
    holder.kill()  # SIGKILL: no cleanup code runs.
    holder.wait()
    with run_dir.RunLock(tmp_path):  # The kernel dropped the dead process's lock.
        pass


HOLD_LOCK = """
import sys
from infoprompt_jax.workdir import run_dir
lock = run_dir.RunLock(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def damage(step_dir):
    """Truncates every array data file of a checkpoint step to half its size."""
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(finished_run, tmp_path):
    workdir, args = copy_run(finished_run, tmp_path)
    final = json.loads((workdir / "summary.json").read_text())
    (workdir / "summary.json").unlink()
    damage(workdir / "checkpoints" / "8")
    (workdir / "checkpoints" / "6" / "state" / "_METADATA").unlink()
    result = commands.run("main", *args)
    assert result.returncode == 0, result.stderr
    for step in (8, 6):
        assert (
            f"Checkpoint {workdir}/checkpoints/{step} is damaged, moved to "
            f"{workdir}/damaged_checkpoints/{step}"
        ) in result.stderr
    assert "Resuming from step 4, the newest intact checkpoint." in result.stderr
    # The failed restores' abandoned reads print nothing ("Event loop is closed" tracebacks).
    assert "Traceback" not in result.stderr
    # Steps 5-8 again, from step 4's state: the same run as the unbroken one.
    resumed = json.loads((workdir / "summary.json").read_text())
    assert resumed["eval_accuracy"] == final["eval_accuracy"]
    assert resumed["best_step"] == final["best_step"]
    # Steps 6 and 8 were saved again, intact: the run's final checkpoint can be exported.
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "6", "8"]
    assert (
        commands.run("export", f"--workdir={workdir}", f"--output={tmp_path / 'e'}").returncode == 0
    )


def test_no_intact_checkpoint_names_the_directory_and_the_fix(finished_run, tmp_path):
    workdir, args = copy_run(finished_run, tmp_path)
    (workdir / "summary.json").unlink()
    for step in ("4", "6", "8"):
        damage(workdir / "checkpoints" / step)
    result = commands.run("main", *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: No checkpoint in {workdir}/checkpoints can be read (steps [4, 6, 8] are all "
        f"damaged; moved to {workdir}/damaged_checkpoints). Rerun to train this run from the "
        "start, or restore its checkpoints from a copy."
    )
    assert "Traceback" not in result.stderr


def damaged_copies(model_dir, tmp_path):
    """Copies of a checkpoint directory whose model.safetensors is damaged in each known way."""
    good = (model_dir / "model.safetensors").read_bytes()
    header_size = int.from_bytes(good[:8], "little")
    damages = {
        "empty": b"",
        "lfs": b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
        "truncated": good[: len(good) // 2],
        "header": good[:8] + b"{not json" + good[17:],
        "short": good[:5],
    }
    copies = {}
    for name, content in damages.items():
        copy = tmp_path / name
        shutil.copytree(model_dir, copy)
        (copy / "model.safetensors").write_bytes(content)
        copies[name] = copy
    assert header_size < len(good) // 2  # "truncated" cuts the tensors, not the header.
    return copies


def test_damaged_encoder_weights_name_the_file_the_fault_and_the_fix(tiny_roberta_dir, tmp_path):
    copies = damaged_copies(tiny_roberta_dir, tmp_path)
    fix = "Download the checkpoint again, or point --config.model.name at an intact copy of it."
    expected = {
        "empty": "is empty (0 bytes): a download or copy did not finish.",
        "lfs": "is a git-LFS pointer (",
        "truncated": "is truncated: tensor ",
        "header": "has a corrupt header (",
        "short": "is truncated: 5 bytes, not even a header.",
    }
    for name, copy in copies.items():
        with pytest.raises(safetensors_file.DamagedFileError) as error:
            pretrained.read_state_dict(copy)
        message = str(error.value)
        assert message.startswith(f"{copy / 'model.safetensors'} "), message
        assert expected[name] in message and message.endswith(fix), message


def test_nan_encoder_weights_are_reported_as_bad_weights_at_load(tiny_roberta_dir, tmp_path):
    tensors = pretrained.read_state_dict(tiny_roberta_dir)
    name = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    tensors = {k: np.array(v) for k, v in tensors.items()}
    tensors[name][3, 2] = np.nan
    copy = tmp_path / "nan"
    shutil.copytree(tiny_roberta_dir, copy)
    safetensors.numpy.save_file(tensors, str(copy / "model.safetensors"))
    with pytest.raises(safetensors_file.DamagedFileError) as error:
        pretrained.load_pretrained(copy)
    assert str(error.value) == (
        f"{copy} (model.safetensors): tensor {name!r} holds 1 non-finite values (NaN or inf); "
        "these weights are damaged. Download the checkpoint again, or point "
        "--config.model.name at an intact copy of it."
    )


def test_a_damaged_or_altered_export_names_its_params_file(tmp_path):
    params = tmp_path / "params.safetensors"
    safetensors.numpy.save_file({"head/bias": np.ones(3, np.float32)}, str(params))
    digest = safetensors_file.sha256(params)
    assert predict.load_trainable(params, digest)["head"]["bias"].tolist() == [1.0, 1.0, 1.0]
    fix = "Export the run again: python -m infoprompt_jax.export --workdir=W --output=DIR."
    safetensors.numpy.save_file({"head/bias": np.full(3, np.nan, np.float32)}, str(params))
    with pytest.raises(safetensors_file.DamagedFileError) as error:
        predict.load_trainable(params, digest)
    assert str(error.value).startswith(f"{params} is not the file that was exported: its SHA-256")
    with pytest.raises(safetensors_file.DamagedFileError) as error:
        predict.load_trainable(params)  # An export without a recorded digest: still checked.
    assert str(error.value) == (
        f"{params}: tensor 'head/bias' holds 3 non-finite values (NaN or inf); these weights "
        f"are damaged. {fix}"
    )
    params.write_bytes(params.read_bytes()[:20])
    with pytest.raises(
        safetensors_file.DamagedFileError, match="is truncated or not a safetensors"
    ):
        predict.load_trainable(params)


def test_a_header_only_train_file_names_the_file(tmp_path):
    data_dir = sentiment_fixture.write_sst2(tmp_path / "data", 8, 4)
    (data_dir / "train.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(ValueError) as error:
        data.load_split(tasks.get_task("sst2"), "train", source="local", data_dir=str(data_dir))
    assert str(error.value) == (
        f"{data_dir / 'train.tsv'} holds no examples (a header or blank lines only); the split "
        "train of task 'sst2' needs at least one."
    )


def test_a_checkpoint_of_another_layout_is_refused_and_kept(finished_run, tmp_path):
    workdir, _ = copy_run(finished_run, tmp_path)
    manager = checkpointing.make_manager(workdir)
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32)}  # Not the run's TrainState.
    with pytest.raises(checkpointing.CheckpointError) as error:
        checkpointing.restore_latest(manager, state)
    assert str(error.value).startswith(
        f"{workdir}/checkpoints/8 holds a train state of another layout than this run's"
    )
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "6", "8"]
    assert not (workdir / "damaged_checkpoints").exists()


def test_a_checkpoint_from_before_divergence_tracking_restores_with_zeros(finished_run, tmp_path):
    """An upgrade keeps old runs readable: their state lacks diverged_at and diverged_loss."""
    workdir, _ = copy_run(finished_run, tmp_path)
    components = components_lib.build_components(workdir_files.load_config(workdir))
    sample = analysis_runs.encode_examples(components, "dev", max_examples=1)
    abstract_state, _ = analysis_runs.restore_target(components, sample)
    manager = checkpointing.make_manager(workdir)
    current, record = checkpointing.restore_latest(manager, abstract_state)
    # Step 8 as the older version wrote it: the same state without the two fields.
    older = {name: getattr(current, name) for name in ("step", "trainable", "opt_state", "rng")}
    old_workdir = tmp_path / "old"
    old_manager = checkpointing.make_manager(old_workdir)
    checkpointing.save(old_manager, 8, older, record)
    restored, restored_record = checkpointing.restore_latest(old_manager, abstract_state)
    assert restored_record == record
    assert int(restored.diverged_at) == 0 and float(restored.diverged_loss) == 0.0
    for name in ("step", "trainable", "opt_state", "rng"):
        assert jax.tree.structure(getattr(restored, name)) == jax.tree.structure(
            getattr(current, name)
        ), name
        jax.tree.map(np.testing.assert_array_equal, getattr(restored, name), getattr(current, name))
