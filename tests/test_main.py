"""Tests of the training command as a user sees it: its log lines, --show_config, the last line."""

import re

import commands
import pytest
import sentiment_fixture

from configs import default
from infoprompt_jax import config_listing

REPO = commands.REPO
OWN_MODULES = {path.name for path in (REPO / "infoprompt_jax").rglob("*.py")}


def test_a_tiny_run_logs_our_lines_only(tiny_roberta_dir, tmp_path):
    data_dir = sentiment_fixture.write_sst2(tmp_path / "data", 32, 16)
    workdir = tmp_path / "run"
    result = commands.run("main", *commands.tiny_run_args(tiny_roberta_dir, data_dir, workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    # absl's prefix names the file that logged: ours only, no Orbax or JAX INFO chatter.
    loggers = {re.match(r"[IWE]\d{4} [\d:.]+ +\d+ (\S+):\d+\]", line).group(1) for line in lines}
    assert loggers <= OWN_MODULES, loggers
    messages = [line.split("] ", 1)[1] for line in lines]
    assert messages[0].startswith("Persistent compilation cache: ")
    assert messages[2:5] == [
        f"Loading the {tiny_roberta_dir} encoder and the sst2 data.",
        "Caching the unprompted pass of 32 examples: 0.0 MB.",  # 16 train and 16 dev.
        "Compiling the train step (the first step takes longest).",
    ]
    assert [m for m in messages if m.startswith("Saved checkpoint")] == [
        "Saved checkpoint at step 4.",
        "Saved checkpoint at step 8.",
    ]
    assert [m.split(":")[0] for m in messages if m.startswith("step ")] == [
        "step 4 epoch 1",
        "step 8 epoch 2",
    ]
    progress = [m for m in messages if m.startswith("epoch ")]
    assert progress[0].startswith("epoch 1/2:  12% 4/32 [")  # Epochs count from 1.
    assert progress[-1].startswith("epoch 2/2: 100% 32/32 [") and "ex/s, loss=" in progress[-1]
    assert re.fullmatch(
        rf"Finished at step 8: eval_accuracy [\d.]+ \(best [\d.]+ at step \d\) in \d+ s\. "
        rf"Outputs in {re.escape(str(workdir))}: .*",
        messages[-1],
    )
    # Compile cache, devices, start (3 lines: the unprompted cache's size), saves, evals,
    # progress, end.
    assert len(lines) == 1 + 1 + 3 + 2 + 2 + 8 + 1
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_show_config_lists_resolved_fields_under_their_comments():
    result = commands.run(
        "main", "--config=configs/rte.py:tiny", "--show_config", "--config.optim.lr=3e-4"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# rte config from configs/rte.py:tiny")
    lr = lines.index("config.optim.lr = 0.0003")
    assert lines[lr - 1] == "# Peak AdamW learning rate of prompt-tuning methods (paper: 1e-3)."
    assert "config.max_len = 32" in lines  # The tiny variant.


def test_config_listing_follows_the_defining_file():
    comments = config_listing.field_comments(REPO / "configs/default.py")
    config = default.get_config()
    text = config_listing.listing(config, comments)
    listed = [line.split(" = ")[0] for line in text.splitlines() if line.startswith("config.")]
    assert listed == [
        f"config.{path}" for path in comments if path in config_listing.leaves(config)
    ]
    assert set(listed) == {f"config.{path}" for path in config_listing.leaves(config)}
    assert comments["model.remat"] == [
        "# Rematerialise encoder layers in the backward pass (less memory, more compute)."
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--rows=a:0:0", "--config.method=warp"], "--rows sets InfoPrompt's loss weights"),
        (["--rows=a:0.1"], "is not NAME:BETA:GAMMA"),
        (["--seeds=0,0"], "give distinct non-negative ints"),
    ],
)
def test_bad_stack_flags_stop_with_one_line_naming_the_fix(tmp_path, flags, message):
    result = commands.run(
        "main", "--config=configs/sst2.py:tiny", f"--workdir={tmp_path}", *flags, timeout=120
    )
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())
