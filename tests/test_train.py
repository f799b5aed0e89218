"""Tests of the training driver: configs, resume after SIGKILL, SIGTERM, checkpoints."""

import json
import pathlib
import signal
import subprocess

import commands
import ml_collections
import numpy as np
import pytest
import sentiment_fixture
from absl import flags
from ml_collections import config_flags

from infoprompt_jax.model import methods
from infoprompt_jax.train import schedule
from infoprompt_jax.workdir import checkpointing

REPO = commands.REPO


def parse_config(argv: list[str]) -> ml_collections.ConfigDict:
    """Parses `--config=... --config.x=y` exactly as main.py does."""
    flag_values = flags.FlagValues()
    # config_flags defines one flag per `--config.x=` it finds in argv, so it is given ours.
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=flag_values, lock_config=True, sys_argv=["prog"] + argv
    )
    flag_values(["prog"] + argv)
    return flag_values["config"].value


def test_config_overrides_and_tiny_variant():
    config = parse_config(
        [
            "--config=configs/rte.py:tiny",
            "--config.optim.lr=3e-4",
            "--config.loss.beta=0",
            "--config.model.name=/models/x",
            "--config.data.few_shot=64",
            "--config.method=warp",
        ]
    )
    assert (config.task, config.optim.lr, config.loss.beta, config.model.name) == (
        "rte",
        3e-4,
        0.0,
        "/models/x",
    )
    assert (config.data.few_shot, config.method, config.max_len) == (64, "warp", 32)
    assert parse_config(["--config=configs/sst2.py"]).task == "sst2"
    with pytest.raises(Exception, match="gama"):
        parse_config(["--config=configs/rte.py", "--config.loss.gama=0"])


@pytest.mark.parametrize("name", ["rte", "mrpc", "cola", "sst2", "semeval", "ace_re", "ace_ner"])
def test_every_task_config_loads_with_paper_defaults(name):
    config = parse_config([f"--config=configs/{name}.py"])
    assert config.task == name
    assert (config.loss.beta, config.loss.gamma, config.loss.num_candidates) == (0.1, 0.05, 32)
    assert (config.optim.lr, config.train.batch_size, config.train.num_epochs) == (1e-3, 8, 30)
    assert config.prompt.generator_rank == 64


def test_methods_resolve_to_their_loss_weights_and_prompts():
    config = parse_config(["--config=configs/rte.py"])
    infoprompt = methods.resolve(config, 2, has_mlm_transform=True)
    assert (infoprompt.loss_weights.beta, infoprompt.loss_weights.gamma) == (0.1, 0.05)
    assert infoprompt.model.use_head_critic and infoprompt.model.use_representation_critic
    config.method = "warp"
    warp = methods.resolve(config, 2, has_mlm_transform=True)
    assert (warp.model.prompt_source, warp.loss_weights.beta, warp.loss_weights.gamma) == (
        "free",
        0,
        0,
    )
    config.method = "finetune"
    finetune = methods.resolve(config, 2, has_mlm_transform=True)
    assert finetune.peak_lr == config.optim.finetune_lr and finetune.model.num_prompt_tokens == 0
    config.method = "bogus"
    with pytest.raises(ValueError, match="config.method='bogus'"):
        methods.resolve(config, 2, has_mlm_transform=True)


def main_args(model_dir, data_dir, workdir) -> list[str]:
    return commands.tiny_run_args(
        model_dir,
        data_dir,
        workdir,
        "--config.train.checkpoint_every_steps=3",
        "--config.train.num_epochs=3",
    )


def run_until(args: list[str], marker: str, sig: int) -> tuple[int, str]:
    """Runs main.py with `args`, sends `sig` when `marker` appears on its stderr.

    Returns:
        The exit code and the stderr printed after the marker.
    """
    process = subprocess.Popen(
        commands.argv("main", *args),
        cwd=commands.REPO,
        env=commands.env(),
        text=True,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    after = None
    for line in process.stderr:
        if after is not None:
            after.append(line)
        elif marker in line:
            after = []
            process.send_signal(sig)
    assert after is not None, f"{marker!r} never appeared"
    return process.wait(), "".join(after)


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tiny_roberta_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    data_dir = sentiment_fixture.write_sst2(root / "data", 32, 16)
    result = commands.run("main", *main_args(tiny_roberta_dir, data_dir, root / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    return (
        data_dir,
        read_jsonl(root / "run" / "metrics.jsonl"),
        json.loads((root / "run" / "summary.json").read_text()),
    )


def test_sigterm_and_sigkill_then_rerun_end_with_the_uninterrupted_metrics(
    tiny_roberta_dir, tmp_path, uninterrupted
):
    data_dir, reference_metrics, reference_summary = uninterrupted
    args = main_args(tiny_roberta_dir, data_dir, tmp_path / "run")
    # Preemption: SIGTERM makes the run save at the next step and exit 143.
    code, stderr = run_until(args, "Saved checkpoint at step 3", signal.SIGTERM)
    assert code == 143, stderr[-2000:]
    assert "SIGTERM: saved step" in stderr
    assert not (tmp_path / "run" / "summary.json").exists()
    # A crash: SIGKILL gives no chance to save; the rerun goes back to the last checkpoint.
    code, _ = run_until(args, "Saved checkpoint at step 6", signal.SIGKILL)
    assert code == -signal.SIGKILL
    result = commands.run("main", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl") == reference_metrics
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("step", "eval_accuracy", "best_step", "best_eval_accuracy"):
        assert summary[key] == reference_summary[key], key


def test_a_half_written_checkpoint_is_never_the_latest(tmp_path):
    manager = checkpointing.make_manager(tmp_path)
    state = {"w": np.arange(3.0)}
    checkpointing.save(manager, 3, state, {"step": 3})
    # What a save killed midway leaves: Orbax's temporary directory, never renamed to "9".
    (tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
    manager.close()
    manager = checkpointing.make_manager(tmp_path)
    assert manager.latest_step() == 3
    restored, record = checkpointing.restore_latest(manager, state)
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert record == {"step": 3}


def test_eval_steps_follow_eval_every_steps_else_the_epochs():
    def eval_steps(eval_every_steps, eval_every_epochs, steps_per_epoch=4, total_steps=10):
        cadence = ml_collections.ConfigDict(
            {"eval_every_steps": eval_every_steps, "eval_every_epochs": eval_every_epochs}
        )
        return [
            done
            for done in range(1, total_steps + 1)
            if schedule.is_eval_step(cadence, done, steps_per_epoch, total_steps)
        ]

    assert eval_steps(0, 1) == [4, 8, 10]
    assert eval_steps(0, 2) == [8, 10]
    assert eval_steps(3, 1) == [3, 6, 9, 10]
