"""Stacked rows: InfoPrompt and its loss-weight ablations in one stack, each run as if alone."""

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
from absl import app

from infoprompt_jax import compile_cache
from infoprompt_jax import main as main_lib
from infoprompt_jax.grid import report
from infoprompt_jax.grid import runner as experiments
from infoprompt_jax.model import trainable
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import loop, sharding, stack_rules, unprompted_cache
from infoprompt_jax.train import loop as train
from infoprompt_jax.workdir import checkpointing

SEEDS = (0, 1)
# (name, beta, gamma): the paper's row, a row without the representation critic, and one
# without either critic, so the union model's critics go unused by two of the three rows.
ROWS = (("infoprompt", 0.1, 0.05), ("beta-0", 0.0, 0.05), ("beta-gamma-0", 0.0, 0.0))


def train_stack(config, workdir: pathlib.Path) -> list[dict]:
    """What `main.py --rows=<ROWS> --seeds=0,1 --workdir=WORKDIR` trains."""
    configs, workdirs = main_lib.stacked_runs(config, str(workdir), SEEDS, ROWS)
    return loop.train_and_evaluate_stacked(configs, workdirs)


@pytest.fixture(scope="module")
def runs(tiny_roberta_dir, tmp_path_factory):
    """(data dir, separate root, stacked root): every row x seed run alone and as one stack,
    each in `<root>/<row>/seed<s>`."""
    root = tmp_path_factory.mktemp("stacked_rows")
    data_dir = sentiment_fixture.write_sst2(root / "data", 40, 24)
    for name, beta, gamma in ROWS:
        for seed in SEEDS:
            config = stacked_runs.run_config(tiny_roberta_dir, data_dir, seed, beta, gamma)
            train.train_and_evaluate(config, str(root / "separate" / name / f"seed{seed}"))
    config = stacked_runs.run_config(tiny_roberta_dir, data_dir, 0)
    summaries = train_stack(config, root / "stacked")
    assert [s["stacked_runs"] for s in summaries] == [6] * 6
    return data_dir, root / "separate", root / "stacked"


def saved_state(workdir: pathlib.Path, step: int) -> dict:
    """The whole train state saved at `step` as numpy arrays, read without a target tree."""
    manager = checkpointing.make_manager(workdir)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    return jax.tree.map(np.asarray, restored["state"])


def test_stacked_rows_match_their_separate_ablations(runs):
    _, separate, stacked = runs
    for name, beta, gamma in ROWS:
        for seed in SEEDS:
            alone, together = (root / name / f"seed{seed}" for root in (separate, stacked))
            records = [stacked_runs.read_jsonl(d / "metrics.jsonl") for d in (alone, together)]
            loss_diff, acc_diff = stacked_runs.compare_metrics(*records)
            print(f"\n{name} seed {seed}: loss rel. diff {loss_diff:.2e}, acc diff {acc_diff}")
            assert loss_diff < stacked_runs.LOSS_RTOL and acc_diff <= 0.01
            # A term whose weight is 0 is logged as its separate run logs it: exactly 0.
            for record in records[1]:
                if "train_nce_rep" in record:
                    assert (record["train_nce_rep"] == 0) == (beta == 0)
                    assert (record["train_nce_head"] == 0) == (gamma == 0)
            assert json.loads((together / "config.json").read_text()) == json.loads(
                (alone / "config.json").read_text()
            )
            a, b = (json.loads((d / "summary.json").read_text()) for d in (alone, together))
            assert (a["step"], a["best_step"]) == (b["step"], b["best_step"])
            # The saved state is the run's own model's: the same tree as its separate run's.
            own, union = (saved_state(d, 9) for d in (alone, together))
            assert trainable.flatten(own).keys() == trainable.flatten(union).keys()
            jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=2e-5), own, union)


def test_a_zero_weight_critic_is_absent_from_the_saved_state(runs):
    _, _, stacked = runs
    paths = {
        name: {p for p in trainable.flatten(saved_state(stacked / name / "seed0", 9)["trainable"])}
        for name, _, _ in ROWS
    }
    assert any(p.startswith("representation_critic/") for p in paths["infoprompt"])
    assert not any(p.startswith("representation_critic/") for p in paths["beta-0"])
    assert any(p.startswith("head_critic/") for p in paths["beta-0"])
    assert not any("critic/" in p for p in paths["beta-gamma-0"])


def test_a_row_stacked_checkpoint_resumes_as_a_separate_run(runs, tiny_roberta_dir, tmp_path):
    data_dir, separate, stacked = runs
    workdir = tmp_path / "beta-gamma-0"
    shutil.copytree(stacked / "beta-gamma-0" / "seed1", workdir)
    (workdir / "summary.json").unlink()
    shutil.rmtree(workdir / "checkpoints" / "9")
    config = stacked_runs.run_config(tiny_roberta_dir, data_dir, 1, 0.0, 0.0)
    summary = train.train_and_evaluate(config, str(workdir))
    reference = json.loads((separate / "beta-gamma-0" / "seed1" / "summary.json").read_text())
    assert summary["step"] == reference["step"] == 9
    assert abs(summary["eval_accuracy"] - reference["eval_accuracy"]) <= 0.01


def test_an_interrupted_row_stack_resumes_to_the_unbroken_result(runs, tiny_roberta_dir, tmp_path):
    """Restored runs go back into the union state (`stacking.embed`) and end as if unbroken."""
    data_dir, _, stacked = runs
    workdir = tmp_path / "stacked"
    shutil.copytree(stacked, workdir)
    for summary in workdir.glob("*/seed*/summary.json"):
        summary.unlink()
    for checkpoint in workdir.glob("*/seed*/checkpoints/9"):
        shutil.rmtree(checkpoint)
    config = stacked_runs.run_config(tiny_roberta_dir, data_dir, 0)
    train_stack(config, workdir)
    for name, _, _ in ROWS:
        for seed in SEEDS:
            resumed, unbroken = (root / name / f"seed{seed}" for root in (workdir, stacked))
            assert stacked_runs.read_jsonl(resumed / "metrics.jsonl") == stacked_runs.read_jsonl(
                unbroken / "metrics.jsonl"
            )
            a, b = (saved_state(d, 9)["trainable"] for d in (resumed, unbroken))
            jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), a, b)


def test_a_stack_refuses_a_workdir_of_another_config(runs, tiny_roberta_dir, tmp_path):
    data_dir, separate, _ = runs
    workdir = tmp_path / "beta-0" / "seed0"
    shutil.copytree(separate / "beta-0" / "seed0", workdir)
    configs = [
        stacked_runs.run_config(tiny_roberta_dir, data_dir, 0, beta, gamma)
        for beta, gamma in ((0.1, 0.05), (0.0, 0.0))  # beta-0's directory, other weights.
    ]
    with pytest.raises(ValueError, match=r"holds a run of another config \(loss.gamma: 0.05 -> 0"):
        loop.train_and_evaluate_stacked(configs, [str(tmp_path / "a"), str(workdir)])


def test_rows_stack_only_infoprompt_weights(tiny_roberta_dir):
    a, b = (sentiment_fixture.tiny_config(tiny_roberta_dir) for _ in range(2))
    b.loss.beta = 0.0
    stack_rules.check_stackable([a, b])
    b.loss.beta = a.loss.beta
    with pytest.raises(ValueError, match=r"\(seed, beta, gamma\) \[\(0, 0.1, 0.05\)\] appear"):
        stack_rules.check_stackable([a, b])
    a.method = b.method = "idpg"
    b.loss.beta = 0.0
    with pytest.raises(ValueError, match="must be method=infoprompt, variant=paper"):
        stack_rules.check_stackable([a, b])
    a.method = b.method = "infoprompt"
    a.variant = b.variant = "released"
    with pytest.raises(ValueError, match=r"got method=infoprompt, variant=released"):
        stack_rules.check_stackable([a, b])


@pytest.mark.parametrize(
    "value, message",
    [
        (["a:0.1"], "is not NAME:BETA:GAMMA"),
        (["a:0.1:x"], "is not NAME:BETA:GAMMA"),
        (["a:0.1:0:2"], "is not NAME:BETA:GAMMA"),
        (["../a:0:0"], "must be a directory name"),
        (["a:-0.1:0"], "finite weights >= 0"),
        (["a:nan:0"], "finite weights >= 0"),
        (["a:0:0", "a:0.1:0"], "distinct names and distinct"),
        (["a:0:0", "b:0:0"], "distinct names and distinct"),
    ],
)
def test_bad_rows_are_refused_with_the_fix(value, message):
    with pytest.raises(app.UsageError, match=message):
        main_lib.parse_rows(value)
    assert main_lib.parse_rows(["infoprompt:0.1:0.05", "beta-gamma-0:0:0"]) == [
        ("infoprompt", 0.1, 0.05),
        ("beta-gamma-0", 0.0, 0.0),
    ]


def test_the_union_cache_passes_each_distinct_example_once(tiny_roberta_dir, monkeypatch):
    config = sentiment_fixture.tiny_config(tiny_roberta_dir)
    components = components_lib.build_components(config)
    examples = sentiment_fixture.examples(12)  # 12 distinct sentences.
    # Rows of one seed hold the same examples; another seed's subset overlaps with them.
    runs_arrays = [components.encode(examples[:8]), components.encode(examples[4:])] * 2
    frozen = trainable.split_params(components.init_params(runs_arrays[0]), "infoprompt")[1]
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    passed = []
    original = unprompted_cache.cache_unprompted_pass

    def counting(model, frozen, arrays, *args):
        passed.append(len(arrays["label"]))
        return original(model, frozen, arrays, *args)

    monkeypatch.setattr(unprompted_cache, "cache_unprompted_pass", counting)
    union = unprompted_cache.cache_unprompted_passes(components.model, frozen, runs_arrays, 8, mesh)
    assert passed == [12]  # Of 32 rows.
    for arrays, cached in zip(runs_arrays, union):
        alone = original(components.model, frozen, arrays, 8, mesh)
        for name in ("cached_generator_input", "cached_z0"):
            np.testing.assert_allclose(cached[name], alone[name], rtol=1e-5, atol=1e-6)


def grid_file(tmp_path, data_dir, model_dir, rows: dict) -> pathlib.Path:
    path = tmp_path / f"grid{len(list(tmp_path.glob('grid*.py')))}.py"
    path.write_text(
        stacked_runs.TINY_GRID.format(data=data_dir, model=model_dir, rows=json.dumps(rows))
    )
    return path


def test_grid_stack_rows(runs, tiny_roberta_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(commands.REPO)
    monkeypatch.setenv("XLA_FLAGS", commands.xla_flags(1))
    monkeypatch.setenv("PYTHONPATH", str(commands.REPO))
    # experiments.run sets the cache directory in os.environ; undo it after the test.
    monkeypatch.setenv(compile_cache.ENV_VAR, "")
    monkeypatch.delenv(compile_cache.ENV_VAR)
    data_dir, root = runs[0], tmp_path / "root"
    infoprompt = {"method": "infoprompt"}
    rows = {
        "InfoPrompt": infoprompt,
        "gamma=0": {**infoprompt, "loss.gamma": 0.0},
        "beta=gamma=0": {**infoprompt, "loss.beta": 0.0, "loss.gamma": 0.0},
        "WARP": {"method": "warp"},
        "InfoPrompt lr": {**infoprompt, "optim.lr": 0.5},  # Not only weights: its own stack.
    }
    grid = grid_file(tmp_path, data_dir, tiny_roberta_dir, rows)
    lines = []
    assert (
        experiments.run(str(grid), str(root), dry_run=True, stack_rows=True, out=lines.append) == 0
    )
    cells_dir = f"{root}/sst2/fs16/np2"
    assert f" --workdir={cells_dir} " in lines[0]
    assert lines[0].endswith(
        " --rows=infoprompt:0.1:0.05,gamma-0:0.1:0.0,beta-gamma-0:0.0:0.0 --seeds=0,1"
    )
    assert "--config.loss" not in lines[0] and "--config.seed" not in lines[0]
    assert [line.split("--workdir=")[1].split()[0] for line in lines[1:]] == [
        f"{cells_dir}/warp",
        f"{cells_dir}/infoprompt-lr",
    ]
    assert all(line.endswith(" --seeds=0,1") for line in lines[1:])
    # A shard holds (seed 0: rows 0, 2, 4) and (seed 1: rows 1, 3) of the 10 cells: rows
    # stack where they hold the same seeds, so no command trains a cell of another shard.
    lines = []
    experiments.run(
        str(grid), str(root), shard="0/2", dry_run=True, stack_rows=True, out=lines.append
    )
    assert lines[0].endswith("--rows=infoprompt:0.1:0.05,beta-gamma-0:0.0:0.0 --seeds=0")
    assert len(lines) == 4 and all("--rows" not in line for line in lines[1:])
    # Run for real: two rows x two seeds in one process.
    grid = grid_file(tmp_path, data_dir, tiny_roberta_dir, {k: rows[k] for k in list(rows)[::2]})
    lines = []
    assert experiments.run(str(grid), str(root), stack_rows=True, out=lines.append) == 0, lines
    for row in ("infoprompt", "beta-gamma-0"):
        for seed in SEEDS:
            summary = json.loads(
                (root / f"sst2/fs16/np2/{row}/seed{seed}/summary.json").read_text()
            )
            assert summary["stacked_runs"] == 4
    config = json.loads((root / "sst2/fs16/np2/beta-gamma-0/seed1/config.json").read_text())
    assert (config["seed"], config["loss"]["beta"], config["loss"]["gamma"]) == (1, 0.0, 0.0)
    assert "--rows=" in (root / "sst2/fs16/np2/log.txt").read_text()
    assert "beta=gamma=0" in report.write_report(root)
