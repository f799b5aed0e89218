"""Phase timings in summary.json, `report --timings`, and the persistent compilation cache."""

import json
import time

import commands
import pytest
import sentiment_fixture

from infoprompt_jax import compile_cache
from infoprompt_jax.grid import report
from infoprompt_jax.train import phase_timer


def test_nested_phases_are_counted_once():
    timer = phase_timer.PhaseTimer()
    with timer.phase("train"):
        time.sleep(0.02)
        with timer.phase("eval"):
            time.sleep(0.03)
    assert 0.02 <= timer.seconds["train"] < 0.03 + 0.02
    assert timer.seconds["eval"] >= 0.03
    seconds = timer.as_dict()
    assert list(seconds)[: len(phase_timer.PHASES)] == list(phase_timer.PHASES)
    assert seconds["compile"] == 0.0
    with pytest.raises(RuntimeError, match="while 'a' is open"):
        timer.start("a")
        timer.stop("b")


def test_startup_is_measured_from_process_start():
    timer = phase_timer.PhaseTimer()
    timer.record_startup()
    assert 0 < timer.seconds["startup"] < 24 * 3600


def test_sum_and_format_timings(tmp_path):
    for i, seconds in enumerate(({"train": 2.0, "compile": 1.0}, {"train": 4.0, "compile": 0.5})):
        cell = tmp_path / f"cell{i}"
        cell.mkdir()
        (cell / "cell.json").write_text("{}")
        (cell / "summary.json").write_text(json.dumps({"seconds": seconds}))
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "cell.json").write_text("{}")
    text = report.timings_report(tmp_path)
    assert "summed over 2 runs" in text
    assert [line.split()[:3] for line in text.splitlines()[2:]] == [
        ["train", "6.0", "3.00"],
        ["compile", "1.5", "0.75"],
        ["all", "7.5", "3.75"],
    ]


def test_compile_cache_directory_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.resolve_directory(None) == str(tmp_path / "infoprompt_jax" / "jax")
    monkeypatch.setenv(compile_cache.ENV_VAR, "/env/dir")
    assert compile_cache.resolve_directory(None) == "/env/dir"
    assert compile_cache.resolve_directory("/flag/dir") == "/flag/dir"
    assert compile_cache.resolve_directory("off") is None


def _run_main(model_dir, data_dir, workdir, cache_dir) -> dict:
    result = commands.run(
        "main",
        *commands.tiny_run_args(model_dir, data_dir, workdir, "--config.train.num_epochs=1"),
        f"--compile_cache={cache_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((workdir / "summary.json").read_text())


def test_summary_timings_and_a_second_process_loads_its_compiled_steps(tiny_roberta_dir, tmp_path):
    data_dir = sentiment_fixture.write_sst2(tmp_path / "data", 16, 16)
    cache = tmp_path / "cache"
    first = _run_main(tiny_roberta_dir, data_dir, tmp_path / "first", cache)["seconds"]
    entries = sorted(path.name for path in cache.iterdir())
    second = _run_main(tiny_roberta_dir, data_dir, tmp_path / "second", cache)["seconds"]
    print(f"\ncompile seconds: first cell {first['compile']:.2f}, second {second['compile']:.2f}")
    print(f"first cell: {first}\nsecond cell: {second}")
    assert set(phase_timer.PHASES) <= set(first)
    for phase in ("startup", "encoder_load", "data", "init", "compile", "train", "eval"):
        assert first[phase] > 0, phase
    # A separate run is a stack of one: its steps are the stacked ones.
    assert any(name.startswith("jit_stacked_train_step") for name in entries), entries
    # Same shapes: the steps come from the cache (no new step entry), compiling is loading. Small
    # helper jits near the 0.05 s threshold may be written by either process on a busy machine.
    new = set(path.name for path in cache.iterdir()) - set(entries)
    assert not [
        name for name in new if name.startswith(("jit_stacked_train_step", "jit_stacked_eval_step"))
    ], new
    assert second["compile"] < 0.5 * first["compile"]
