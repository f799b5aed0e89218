"""Stacked seeds: one process, one compiled step, each seed's run directory as if run alone."""

import json
import pathlib
import shutil

import commands
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import sentiment_fixture
import stacked_runs

from infoprompt_jax import compile_cache
from infoprompt_jax.grid import report
from infoprompt_jax.grid import runner as experiments
from infoprompt_jax.train import (
    batching,
    loop,
    run_slots,
    run_state,
    sharding,
    stack_rules,
    stacking,
)
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import loop as train
from infoprompt_jax.train import optimizer as optimizer_lib
from infoprompt_jax.workdir import checkpointing

REPO = commands.REPO

SEEDS = (0, 1)
LOSS_RTOL = stacked_runs.LOSS_RTOL
read_jsonl = stacked_runs.read_jsonl
seed_config = stacked_runs.run_config
compare_metrics = stacked_runs.compare_metrics


@pytest.fixture(scope="module")
def runs(tiny_roberta_dir, tmp_path_factory):
    """(data dir, separate workdirs, stacked workdirs) of a 2-seed tiny run, trained once."""
    root = tmp_path_factory.mktemp("stacking")
    data_dir = sentiment_fixture.write_sst2(root / "data", 40, 24)
    separate = [root / "separate" / f"seed{s}" for s in SEEDS]
    for seed, workdir in zip(SEEDS, separate):
        train.train_and_evaluate(seed_config(tiny_roberta_dir, data_dir, seed), str(workdir))
    stacked = [root / "stacked" / f"seed{s}" for s in SEEDS]
    configs = [seed_config(tiny_roberta_dir, data_dir, s) for s in SEEDS]
    summaries = loop.train_and_evaluate_stacked(configs, [str(w) for w in stacked])
    assert [s["stacked_runs"] for s in summaries] == [2, 2]
    return data_dir, separate, stacked


def test_stacked_seeds_match_their_separate_runs(runs):
    _, separate, stacked = runs
    for seed, alone, together in zip(SEEDS, separate, stacked):
        loss_diff, acc_diff = compare_metrics(
            read_jsonl(alone / "metrics.jsonl"), read_jsonl(together / "metrics.jsonl")
        )
        print(f"\nseed {seed}: train loss rel. diff {loss_diff:.2e}, eval acc diff {acc_diff}")
        assert loss_diff < LOSS_RTOL and acc_diff <= 0.01
        config = json.loads((together / "config.json").read_text())
        assert config["seed"] == seed
        assert config == json.loads((alone / "config.json").read_text())
        a, b = (json.loads((d / "summary.json").read_text()) for d in (alone, together))
        assert (a["step"], a["best_step"]) == (b["step"], b["best_step"])
        assert abs(a["eval_accuracy"] - b["eval_accuracy"]) <= 0.01
        assert sorted(p.name for p in (alone / "checkpoints").iterdir()) == sorted(
            p.name for p in (together / "checkpoints").iterdir()
        )
    # The seeds did train differently (different subsets, orders and inits).
    losses = [read_jsonl(d / "metrics.jsonl")[0]["train_loss"] for d in stacked]
    assert losses[0] != losses[1]


def test_a_stacked_checkpoint_resumes_as_a_separate_run(runs, tiny_roberta_dir, tmp_path):
    """A stacked run directory is a run directory: main.py's loop finishes it from a checkpoint."""
    data_dir, separate, stacked = runs
    config = seed_config(tiny_roberta_dir, data_dir, SEEDS[1])
    # Copy the stacked seed's directory minus its summary and last checkpoint.
    workdir = tmp_path / "seed1"
    shutil.copytree(stacked[1], workdir)
    (workdir / "summary.json").unlink()
    last = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    shutil.rmtree(workdir / "checkpoints" / str(last))
    summary = train.train_and_evaluate(config, str(workdir))
    reference = json.loads((separate[1] / "summary.json").read_text())
    assert summary["step"] == reference["step"]
    assert abs(summary["eval_accuracy"] - reference["eval_accuracy"]) <= 0.01


def test_interrupted_stacked_run_resumes_to_the_unbroken_result(runs, tiny_roberta_dir, tmp_path):
    data_dir, _, stacked = runs
    workdirs = [str(tmp_path / f"seed{s}") for s in SEEDS]
    # What SIGKILL during a save leaves: seed 0 saved step 6, seed 1 only step 3.
    configs = [seed_config(tiny_roberta_dir, data_dir, s) for s in SEEDS]
    original_save = run_slots.checkpointing.save
    saved_steps = []

    class Killed(Exception):
        pass

    def save_then_die(manager, step, state, record):
        original_save(manager, step, state, record)
        saved_steps.append(step)
        # Die after the first seed's checkpoint at step 6: the seeds stop at different steps.
        if step == 6:
            raise Killed

    run_slots.checkpointing.save = save_then_die
    try:
        with pytest.raises(Killed):
            loop.train_and_evaluate_stacked(configs, workdirs)
    finally:
        run_slots.checkpointing.save = original_save
    assert saved_steps == [3, 3, 6]
    assert not (tmp_path / "seed0" / "summary.json").exists()
    loop.train_and_evaluate_stacked(configs, workdirs)
    for workdir, reference in zip(workdirs, stacked):
        assert read_jsonl(pathlib.Path(workdir) / "metrics.jsonl") == read_jsonl(
            reference / "metrics.jsonl"
        )
        a, b = (
            json.loads((pathlib.Path(d) / "summary.json").read_text()) for d in (workdir, reference)
        )
        for key in ("step", "eval_accuracy", "best_step", "best_eval_accuracy"):
            assert a[key] == b[key], key


def test_a_damaged_checkpoint_of_one_seed_resumes_the_stack_from_the_newest_common_step(
    runs, tiny_roberta_dir, tmp_path
):
    data_dir, _, stacked = runs
    workdirs = [tmp_path / f"seed{s}" for s in SEEDS]
    for source, workdir in zip(stacked, workdirs):
        shutil.copytree(source, workdir)
        (workdir / "summary.json").unlink()
    assert sorted(p.name for p in (workdirs[1] / "checkpoints").iterdir()) == ["6", "9"]
    for path in (workdirs[1] / "checkpoints" / "9" / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":  # Truncated array data.
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    configs = [seed_config(tiny_roberta_dir, data_dir, s) for s in SEEDS]
    loop.train_and_evaluate_stacked(configs, [str(w) for w in workdirs])
    # Seed 1 falls back to step 6, seed 0 goes back to it: both train steps 7-9 again.
    assert (tmp_path / "seed1" / "damaged_checkpoints" / "9").is_dir()
    for workdir, reference in zip(workdirs, stacked):
        assert read_jsonl(workdir / "metrics.jsonl") == read_jsonl(reference / "metrics.jsonl")
        assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["6", "9"]
        final, expected = (saved_trainable(d, 9) for d in (workdir, reference))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), final, expected)


def saved_trainable(workdir: pathlib.Path, step: int):
    """The trainable params saved at `step`, as numpy arrays (no target tree needed)."""
    manager = checkpointing.make_manager(workdir)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    return jax.tree.map(np.asarray, restored["state"]["trainable"])


def test_a_diverging_seed_fails_alone(runs, tiny_roberta_dir, tmp_path, monkeypatch):
    data_dir, _, stacked = runs
    configs = [seed_config(tiny_roberta_dir, data_dir, s) for s in SEEDS]
    original = loop.stacking.stacked_device_batch

    def poison_seed1(runs_rows, *args, **kwargs):
        runs_rows = [dict(rows) for rows in runs_rows]
        runs_rows[1]["label"] = np.full_like(runs_rows[1]["label"], 10**6)  # NaN cross entropy.
        return original(runs_rows, *args, **kwargs)

    monkeypatch.setattr(loop.stacking, "stacked_device_batch", poison_seed1)
    workdirs = [tmp_path / f"seed{s}" for s in SEEDS]
    summaries = loop.train_and_evaluate_stacked(configs, [str(w) for w in workdirs])
    assert summaries[1]["failed"].startswith("Training diverged at step 1: loss nan")
    assert not (workdirs[1] / "summary.json").exists()
    assert "failed" not in summaries[0]
    assert read_jsonl(workdirs[0] / "metrics.jsonl") == read_jsonl(stacked[0] / "metrics.jsonl")


def test_configs_must_differ_only_in_seed(tiny_roberta_dir):
    a, b = (sentiment_fixture.tiny_config(tiny_roberta_dir) for _ in range(2))
    with pytest.raises(ValueError, match="must be distinct runs"):
        stack_rules.check_stackable([a, b])
    b.seed, b.optim.lr = 1, 0.5
    with pytest.raises(
        ValueError,
        match=r"only in seed, loss.beta, loss.gamma; the run \(seed, beta, gamma\) = "
        r"\(1, 0.1, 0.05\) also changes \['optim.lr'\]",
    ):
        stack_rules.check_stackable([a, b])
    a.method = b.method = "adapter"
    b.optim.lr = a.optim.lr
    with pytest.raises(ValueError, match="method=adapter cannot stack"):
        stack_rules.check_stackable([a, b])


TINY_GRID = stacked_runs.TINY_GRID


def test_grid_stack_seeds(runs, tiny_roberta_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("XLA_FLAGS", commands.xla_flags(1))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    # experiments.run sets the cache directory in os.environ; undo it after the test.
    monkeypatch.setenv(compile_cache.ENV_VAR, "")
    monkeypatch.delenv(compile_cache.ENV_VAR)
    data_dir = runs[0]
    infoprompt = '"InfoPrompt": {"method": "infoprompt"}'
    grids = {}
    for name, rows in (
        ("two_rows", infoprompt + ', "Adapter": {"method": "adapter"}'),
        ("one_row", infoprompt),
    ):
        grids[name] = tmp_path / f"{name}.py"
        grids[name].write_text(
            TINY_GRID.format(data=data_dir, model=tiny_roberta_dir, rows="{" + rows + "}")
        )
    root = tmp_path / "root"
    lines = []
    assert (
        experiments.run(
            str(grids["two_rows"]), str(root), dry_run=True, stack_seeds=True, out=lines.append
        )
        == 0
    )
    assert len(lines) == 3  # InfoPrompt's two seeds stacked; Adapter's seeds alone.
    assert lines[0].endswith(" --seeds=0,1") and f"--workdir={root}/sst2/fs16/np2/infoprompt " in (
        lines[0] + " "
    )
    assert all("--seeds" not in line for line in lines[1:])
    # Run for real, the stacked row only: Adapter's cells are ordinary cells (test_experiments).
    assert (
        experiments.run(str(grids["one_row"]), str(root), stack_seeds=True, out=lines.append) == 0
    ), lines
    for seed in SEEDS:
        summary = json.loads(
            (root / f"sst2/fs16/np2/infoprompt/seed{seed}/summary.json").read_text()
        )
        assert summary["stacked_runs"] == 2
        assert summary["peak_device_mem_mb"] is None  # a CPU keeps no memory statistics
    assert (root / "sst2/fs16/np2/infoprompt/log.txt").exists()
    assert any((root / ".jax_cache").iterdir())
    assert "summed over 2 runs" in report.timings_report(root)
    assert "SST-2" in report.write_report(root)


def stacked_history(model_dir, devices, num_runs, batch_size, fsdp=1, num_steps=3, vectorize=None):
    """Per step, the stacked runs' losses `[R]` and eval logits, on a mesh over `devices`."""
    config = sentiment_fixture.tiny_config(model_dir)
    components = components_lib.build_components(config)
    arrays = components.encode(sentiment_fixture.examples(batch_size * num_runs))
    mesh = sharding.make_mesh(fsdp=fsdp, devices=devices)
    spread = stacking.spreads_runs(batch_size, num_runs, mesh)
    optimizer = optimizer_lib.from_config(config, components.method.peak_lr, 30)
    run_states, frozen = [], None
    for seed in range(num_runs):
        state, run_frozen = run_state.build_state(
            stacked_runs.components_for_seed(components, seed), optimizer, mesh, arrays
        )
        run_states.append(state)
        frozen = frozen or run_frozen
    states = stacking.place_states(stacking.stack(run_states), mesh, spread)
    train_fn, eval_fn = stacking.compile_stacked_steps(
        components.model,
        optimizer,
        components.method.loss_weights,
        mesh,
        states,
        frozen,
        spread=spread,
        vectorize=vectorize,
    )
    rows = [
        {k: v[r * batch_size : (r + 1) * batch_size] for k, v in arrays.items()}
        for r in range(num_runs)
    ]
    batches = stacking.stacked_device_batch(rows, mesh, spread)
    weights = np.zeros(num_runs, np.float32)  # Unread: the weights are static here.
    losses = []
    for _ in range(num_steps):
        states, metrics = train_fn(states, frozen, batches, weights, weights)
        losses.append(np.asarray(metrics["loss"]))
    dev = batching.device_batch(arrays, np.arange(8), mesh)
    return spread, np.stack(losses), np.asarray(eval_fn(states.trainable, frozen, dev))


@pytest.mark.parametrize(
    "num_runs, batch_size, fsdp, spread",
    [(2, 8, 1, False), (2, 8, 2, False), (8, 4, 1, True)],
    ids=["batch-split", "batch-split-fsdp", "runs-spread"],
)
def test_the_run_axis_on_8_devices_equals_1_device(
    tiny_roberta_dir, num_runs, batch_size, fsdp, spread
):
    assert jax.device_count() == 8  # conftest: 8 fake CPU devices.
    one = stacked_history(tiny_roberta_dir, jax.devices()[:1], num_runs, batch_size)
    eight = stacked_history(tiny_roberta_dir, jax.devices(), num_runs, batch_size, fsdp)
    assert (one[0], eight[0]) == (False, spread)
    np.testing.assert_allclose(eight[1], one[1], rtol=1e-5)
    np.testing.assert_allclose(eight[2], one[2], rtol=1e-4, atol=1e-5)


def test_vmap_and_lax_map_over_the_runs_agree(tiny_roberta_dir):
    """The two ways of mapping the step over runs (vmap on accelerators, lax.map on a CPU)."""
    devices = jax.devices()[:1]
    mapped = stacked_history(tiny_roberta_dir, devices, 2, 8, vectorize=False)
    vmapped = stacked_history(tiny_roberta_dir, devices, 2, 8, vectorize=True)
    np.testing.assert_allclose(mapped[1], vmapped[1], rtol=1e-5)
    np.testing.assert_allclose(mapped[2], vmapped[2], rtol=1e-4, atol=1e-5)
