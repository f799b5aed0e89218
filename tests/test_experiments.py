"""Tests of the experiment grid runner and the results report; nothing trains here."""

import csv
import io
import json
import os
import pathlib
import shlex
import subprocess
import sys

import commands
import pytest

from infoprompt_jax.grid import grids, report
from infoprompt_jax.grid import runner as experiments

REPO = commands.REPO

# ml_collections loads config files with importlib's deprecated load_module(); not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

SMALL_GRID = """
def get_grid():
  return {
      "tasks": {"rte": {"config": "configs/rte.py", "overrides": {"data.dir": "/data/RTE"}},
                "mrpc": "configs/mrpc.py"},
      "rows": {"InfoPrompt": {"method": "infoprompt"},
               "beta=gamma=0": {"method": "infoprompt", "loss.beta": 0.0, "loss.gamma": 0.0},
               "WARP": {"method": "warp", "data.dir": "/data/row"}},
      "num_tokens": [1, 4],
      "few_shot": [0, 64],
      "seeds": [0, 1, 2],
      "overrides": {"data.source": "local", "data.dir": "/data/shared",
                    "train.num_epochs": 3, "cache_unprompted": True},
  }
"""


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    # Task config paths are relative to the working directory, as for main.py.
    monkeypatch.chdir(REPO)
    # The minilm_smoke grid names the MiniLM package's model directory; these tests only expand
    # and parse commands, so they need no installed model (CI installs none).
    monkeypatch.setenv("MINILM_DIR", "/models/all-MiniLM-L6-v2")


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "small.py"
    path.write_text(SMALL_GRID)
    return path


def small_cells(grid_file):
    return grids.expand(grids.load_grid(grid_file))


def test_expansion_count_order_and_dirs(grid_file):
    cells = small_cells(grid_file)
    assert len(cells) == 3 * 2 * 2 * 2 * 3  # seeds x few_shot x num_tokens x tasks x rows
    assert [c.index for c in cells] == list(range(len(cells)))
    assert len({c.name for c in cells}) == len(cells)
    assert cells[0].name == "rte/full/np1/infoprompt/seed0"
    assert cells[1].name == "rte/full/np1/beta-gamma-0/seed0"
    assert cells[-1].name == "mrpc/fs64/np4/warp/seed2"
    assert (cells[-1].row_index, cells[-1].task_index, cells[-1].setting_index) == (2, 1, 3)
    assert [c.name for c in small_cells(grid_file)] == [c.name for c in cells]


def test_appending_a_seed_keeps_indices(grid_file, tmp_path):
    grid = grids.load_grid(grid_file)
    before = grids.expand(grid)
    after = grids.expand({**grid, "seeds": grid["seeds"] + [3]})
    assert [(c.index, c.name) for c in after[: len(before)]] == [(c.index, c.name) for c in before]


def test_overrides_merge_grid_then_task_then_row_then_axes(grid_file):
    cells = {c.name: c for c in small_cells(grid_file)}
    assert cells["rte/fs64/np4/infoprompt/seed1"].overrides == {
        "data.source": "local",
        "data.dir": "/data/RTE",
        "train.num_epochs": 3,
        "cache_unprompted": True,
        "method": "infoprompt",
        "prompt.num_tokens": 4,
        "data.few_shot": 64,
        "seed": 1,
    }
    assert cells["mrpc/full/np1/infoprompt/seed0"].overrides["data.dir"] == "/data/shared"
    assert cells["rte/full/np1/warp/seed0"].overrides["data.dir"] == "/data/row"
    ablation = cells["mrpc/full/np4/beta-gamma-0/seed2"]
    assert (ablation.overrides["loss.beta"], ablation.overrides["loss.gamma"]) == (0.0, 0.0)


def test_command_line(grid_file, tmp_path):
    cell = {c.name: c for c in small_cells(grid_file)}["rte/fs64/np4/beta-gamma-0/seed1"]
    workdir = tmp_path / "root" / "rte/fs64/np4/beta-gamma-0/seed1"
    assert cell.command(tmp_path / "root") == [
        sys.executable,
        "-m",
        "infoprompt_jax.main",
        "--config=configs/rte.py",
        f"--workdir={workdir}",
        "--config.data.source=local",
        "--config.data.dir=/data/RTE",
        "--config.train.num_epochs=3",
        "--config.cache_unprompted=true",
        "--config.method=infoprompt",
        "--config.loss.beta=0.0",
        "--config.loss.gamma=0.0",
        "--config.prompt.num_tokens=4",
        "--config.data.few_shot=64",
        "--config.seed=1",
    ]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_shards_partition_the_cells(grid_file, n):
    cells = small_cells(grid_file)
    shards = [grids.select_shard(cells, f"{i}/{n}") for i in range(n)]
    indices = [c.index for shard in shards for c in shard]
    assert sorted(indices) == list(range(len(cells)))  # Union is all, and nothing twice.


@pytest.mark.parametrize("shard", ["2/2", "1", "-1/2", "a/b", "0/0"])
def test_bad_shard(shard):
    with pytest.raises(grids.GridError, match="--shard"):
        grids.parse_shard(shard)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rows": {"A": {"seed": 3}}}, "grid axis"),
        ({"rows": {"A": {"config.loss.beta": 0.0}}}, "not a config path"),
        ({"rows": {"A b": {}, "a-b": {}}}, "share the directory name"),
        ({"seeds": []}, "missing or empty"),
        ({"seed": [0]}, "unknown keys"),
        ({"few_shot": [64, 64]}, "repeats"),
        ({"tasks": {"rte": {"file": "configs/rte.py"}}}, "config file path"),
        ({"overrides": {"model.name": None}}, "type NoneType"),
    ],
)
def test_malformed_grids(change, message):
    grid = {
        "tasks": {"rte": "configs/rte.py"},
        "rows": {"A": {}},
        "num_tokens": [4],
        "few_shot": [0],
        "seeds": [0],
        **change,
    }
    with pytest.raises(grids.GridError, match=message):
        grids.normalize_grid(grid, name="bad")


@pytest.mark.parametrize(
    "rows, message",
    [
        ({"A": {"loss.gama": 0.0}}, 'Did you mean "gamma"'),
        ({"A": {"train.num_epochs": 1.5}}, "invalid literal for int"),
    ],
)
def test_validate_rejects_what_main_rejects(tmp_path, rows, message):
    grid = grids.normalize_grid(
        {
            "tasks": {"rte": "configs/rte.py"},
            "rows": rows,
            "num_tokens": [4],
            "few_shot": [0],
            "seeds": [0],
        },
        "bad",
    )
    with pytest.raises(grids.GridError, match=message):
        grids.validate(grids.expand(grid), tmp_path)


def test_validate_checks_the_config_file_runs_the_task(tmp_path):
    grid = grids.normalize_grid(
        {
            "tasks": {"sst2": "configs/rte.py"},
            "rows": {"A": {}},
            "num_tokens": [4],
            "few_shot": [0],
            "seeds": [0],
        },
        "bad",
    )
    with pytest.raises(grids.GridError, match="runs task 'rte', not 'sst2'"):
        grids.validate(grids.expand(grid), tmp_path)


def test_dry_run_commands_parse_with_config_flags(grid_file, tmp_path):
    lines, root = [], tmp_path / "root"
    assert experiments.run(str(grid_file), str(root), dry_run=True, out=lines.append) == 0
    cells = small_cells(grid_file)
    assert len(lines) == len(cells)
    assert not root.exists()  # A dry run writes nothing.
    for line, cell in zip(lines, cells):
        command = shlex.split(line)
        assert command == cell.command(root)
        assert all(arg.startswith("--config.") for arg in command[5:])
        config, workdir = grids.parse_command(command)
        assert workdir == str(root / cell.name)
        for key, value in cell.overrides.items():
            node = config
            for part in key.split("."):
                node = node[part]
            assert node == value and type(node) is type(value), key


# main.py with the training replaced by a print of what its flags parsed to.
_MAIN_STUB = """
import json
from infoprompt_jax.train import loop as train
def fake_train(config, workdir, timer=None):
  print("PARSED " + json.dumps({"config": config.to_dict(), "workdir": workdir}))
  return {"preempted": False}
train.train_and_evaluate = fake_train
from infoprompt_jax import cli, main
cli.run_command(main.define_flags, main.main)
"""


def test_dry_run_command_is_accepted_by_main_py(tmp_path):
    lines = []
    grid = str(REPO / "configs/grids/minilm_smoke.py")
    assert experiments.run(grid, str(tmp_path), dry_run=True, out=lines.append) == 0
    command = shlex.split(lines[1])  # sst2, beta=gamma=0, seed 0.
    result = subprocess.run(
        [sys.executable, "-c", _MAIN_STUB] + command[3:],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.split("PARSED ", 1)[1])
    config = parsed["config"]
    assert parsed["workdir"] == str(tmp_path / "sst2/fs256/np4/beta-gamma-0/seed0")
    assert (config["task"], config["method"], config["seed"]) == ("sst2", "infoprompt", 0)
    assert (config["loss"]["beta"], config["loss"]["gamma"]) == (0.0, 0.0)
    assert config["data"] == {
        **config["data"],
        "source": "local",
        "few_shot": 256,
        "dir": str(REPO.parent / "shared/data/glue/SST-2"),
    }
    assert (config["prompt"]["num_tokens"], config["max_len"]) == (4, 128)
    assert config["train"]["num_epochs"] == 10
    assert config["model"]["name"] == os.environ["MINILM_DIR"]  # Set by the autouse fixture.


def test_shipped_grids():
    sizes = {
        "paper_full.py": 5 * 9 * 2 * 5,
        "paper_few_shot.py": 5 * 9 * 2 * 5,
        "minilm_smoke.py": 2 * 3 * 3,
        "minilm_stack_slice.py": 2 * 3,
        "gpu_stack_slice.py": 4 * 5,
    }
    for name, size in sizes.items():
        grid = grids.load_grid(REPO / "configs/grids" / name)
        cells = grids.expand(grid)
        assert len(cells) == size, name
        grids.validate(cells, "/nonexistent/root")  # Every command parses.
    # The GPU benchmark's slice: the 4 InfoPrompt rows stack into 4 seed stacks, or 1 with rows.
    slice_cells = grids.expand(grids.load_grid(REPO / "configs/grids/gpu_stack_slice.py"))
    seed_stacks = experiments.stack_groups(slice_cells, "/nonexistent/root")
    assert [len(group) for group in seed_stacks] == [5, 5, 5, 5]
    assert len(experiments.stack_groups(slice_cells, "/nonexistent/root", stack_rows=True)) == 1
    smoke = grids.load_grid(REPO / "configs/grids/minilm_smoke.py")
    assert list(smoke["rows"]) == ["InfoPrompt", "beta=gamma=0", "WARP"]
    for task, folder in (("sst2", "SST-2"), ("rte", "RTE")):
        data_dir = pathlib.Path(smoke["tasks"][task]["overrides"]["data.dir"])
        assert data_dir == REPO.parent / "shared/data/glue" / folder


class FakeRunner:
    """Stands in for `experiments.run_command`: 'finishes' a cell by writing its summary."""

    def __init__(self, statuses=None):
        self.statuses = statuses or {}  # cell name -> exit status without a summary
        self.ran = []

    def __call__(self, command, log_path):
        workdir = pathlib.Path(next(a for a in command if a.startswith("--workdir="))[10:])
        name = str(workdir.relative_to(log_path.parents[5]))
        self.ran.append(name)
        log_path.write_text("fake log\n")
        if name in self.statuses:
            return self.statuses[name]
        (workdir / "summary.json").write_text('{"eval_accuracy": 0.5}')
        return 0


def test_run_skips_finished_cells(grid_file, tmp_path, monkeypatch):
    cells = small_cells(grid_file)
    done = cells[5]
    done.workdir(tmp_path).mkdir(parents=True)
    (done.workdir(tmp_path) / "summary.json").write_text("{}")
    runner = FakeRunner()
    monkeypatch.setattr(experiments, "run_command", runner)
    lines = []
    assert experiments.run(str(grid_file), str(tmp_path), shard="1/2", out=lines.append) == 0
    expected = [c.name for c in cells if c.index % 2 == 1 and c.index != 5]
    assert runner.ran == expected
    assert lines[0] == f"36 cells, 1 finished already, {len(expected)} to run."
    assert lines[1].startswith("[2/36] ok ") and "| ETA " in lines[1]
    assert lines[-1] == "All cells finished."
    record = json.loads((cells[1].workdir(tmp_path) / "cell.json").read_text())
    assert (record["row"], record["task"], record["seed"]) == ("beta=gamma=0", "rte", 0)
    runner.ran.clear()
    assert experiments.run(str(grid_file), str(tmp_path), shard="1/2", out=lines.append) == 0
    assert not runner.ran


def test_failed_cells_are_listed_and_fail_the_grid(grid_file, tmp_path, monkeypatch):
    cells = small_cells(grid_file)
    runner = FakeRunner({cells[1].name: 1, cells[4].name: 143})
    monkeypatch.setattr(experiments, "run_command", runner)
    lines = []
    assert (
        experiments.run(
            str(grid_file), str(tmp_path), shard="0/6", max_parallel=2, out=lines.append
        )
        == 0
    )  # Neither bad cell is in shard 0/6.
    status = experiments.run(str(grid_file), str(tmp_path), shard="0/1", out=lines.append)
    assert status == 1
    assert len(runner.ran) == len(cells)  # The grid went on past the failures.
    assert lines[-3:] == [
        "2 cells did not finish:",
        f"  failed: {cells[1].name} (exit status 1); log: {cells[1].workdir(tmp_path)}/log.txt",
        f"  preempted: {cells[4].name} (checkpoint saved; rerun the grid to resume); log: "
        f"{cells[4].workdir(tmp_path)}/log.txt",
    ]


def test_cli_exit_status_on_failure(grid_file, tmp_path):
    # A real subprocess run with a config path that does not exist from ROOT's cwd fails early.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "infoprompt_jax.experiments",
            f"--grid={grid_file}",
            f"--root={tmp_path}",
            "--dry_run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "config file configs/rte.py not found" in result.stderr


def test_cli_dry_run(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "infoprompt_jax.experiments",
            "--grid=configs/grids/minilm_smoke.py",
            f"--root={tmp_path}",
            "--dry_run",
            "--shard=1/3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 6


def test_changed_overrides_in_an_existing_cell_dir_are_refused(grid_file, tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "run_command", FakeRunner())
    assert experiments.run(str(grid_file), str(tmp_path), shard="0/36", out=lambda _: None) == 0
    changed = tmp_path / "changed.py"
    changed.write_text(SMALL_GRID.replace('"train.num_epochs": 3', '"train.num_epochs": 5'))
    with pytest.raises(grids.GridError, match=r"train.num_epochs: 3 -> 5.*new --root"):
        experiments.run(str(changed), str(tmp_path), shard="0/36", dry_run=True)


# The report, on run directories made by hand.

REPORT_GRID = {
    "tasks": {"rte": "configs/rte.py", "mrpc": "configs/mrpc.py"},
    "rows": {"InfoPrompt": {"method": "infoprompt"}, "WARP": {"method": "warp"}},
    "num_tokens": [4],
    "few_shot": [0],
    "seeds": [0, 1, 2],
}

# (row, task, seed) -> summary.json; missing entries are unfinished cells.
SUMMARIES = {
    ("InfoPrompt", "rte", 0): {"eval_accuracy": 0.70, "best_step": 20, "best_eval_accuracy": 0.75},
    ("InfoPrompt", "rte", 1): {"eval_accuracy": 0.72, "best_step": 20, "best_eval_accuracy": 0.76},
    ("InfoPrompt", "rte", 2): {"eval_accuracy": 0.74, "best_step": 20, "best_eval_accuracy": 0.77},
    ("InfoPrompt", "mrpc", 0): {
        "eval_accuracy": 0.80,
        "eval_f1": 0.85,
        "best_step": 10,
        "best_eval_accuracy": 0.90,
    },
    ("InfoPrompt", "mrpc", 1): {
        "eval_accuracy": 0.82,
        "eval_f1": 0.86,
        "best_step": 10,
        "best_eval_accuracy": 0.90,
    },
    ("InfoPrompt", "mrpc", 2): {
        "eval_accuracy": 0.84,
        "eval_f1": 0.87,
        "best_step": 10,
        "best_eval_accuracy": 0.90,
    },
    ("WARP", "rte", 0): {"eval_accuracy": 0.60, "best_step": 20, "best_eval_accuracy": 0.65},
    ("WARP", "rte", 1): {"eval_accuracy": 0.64, "best_step": 20, "best_eval_accuracy": 0.65},
}


@pytest.fixture
def report_root(tmp_path):
    root = tmp_path / "root"
    for cell in grids.expand(grids.normalize_grid(REPORT_GRID, "report")):
        grids.write_cell_json(cell, root)
        summary = SUMMARIES.get((cell.row, cell.task, cell.seed))
        if summary is not None:
            (cell.workdir(root) / "summary.json").write_text(json.dumps(summary))
        if cell.task == "mrpc":  # For --select=best: F1 at the best step.
            # Steps to 95% of the final 0.8 (>= 0.76): seed 1's step-5 eval reaches it, seed 0's
            # and seed 2's first reach it at step 10.
            early = {0: "", 1: '{"step": 5, "eval_accuracy": 0.78}\n'}.get(
                cell.seed, '{"step": 5, "eval_accuracy": 0.5}\n'
            )
            (cell.workdir(root) / "metrics.jsonl").write_text(
                early + '{"step": 10, "train_loss": 0.5}\n'
                '{"step": 10, "eval_accuracy": 0.9, "eval_f1": 0.95}\n'
                '{"step": 20, "eval_accuracy": 0.8, "eval_f1": 0.5}\n'
            )
    return root


EXPECTED_TABLE = """\
## Full data, n_p = 4

| Method | RTE | MRPC (acc/F1) | Average |
|---|---|---|---|
| InfoPrompt | 72.0 ± 2.0 | 82.0 ± 2.0 / 86.0 ± 1.0 | 77.0 |
| WARP | 62.0 ± 2.8 (n=2) | – | – |
"""


EXPECTED_CONVERGENCE = """\
### Full data, n_p = 4: steps to 95% of the final dev score

| Method | RTE | MRPC |
|---|---|---|
| InfoPrompt | – | 8 ± 3 |
| WARP | – | – |
"""


def test_report_markdown(report_root):
    markdown = report.write_report(report_root)
    assert EXPECTED_TABLE + "\n" + EXPECTED_CONVERGENCE in markdown
    assert markdown.endswith(EXPECTED_CONVERGENCE)
    assert markdown.startswith("# Results\n")
    assert "MRPC accuracy / F1" in markdown and "ddof=1" in markdown
    assert "4 cells have no summary.json yet" in markdown
    assert (report_root / "results.md").read_text() == markdown


def test_report_csv(report_root):
    report.write_report(report_root)
    rows = list(csv.DictReader(io.StringIO((report_root / "results.csv").read_text())))
    table = {
        (r["row"], r["task"], r["metric"]): (r["n"], r["expected_n"], r["mean"], r["std"])
        for r in rows
    }
    assert table == {
        ("InfoPrompt", "rte", "accuracy"): ("3", "3", "72.0000", "2.0000"),
        ("InfoPrompt", "mrpc", "accuracy"): ("3", "3", "82.0000", "2.0000"),
        ("InfoPrompt", "mrpc", "f1"): ("3", "3", "86.0000", "1.0000"),
        ("InfoPrompt", "Average", "main"): ("", "", "77.0000", ""),
        ("InfoPrompt", "rte", "steps_to_95pct"): ("0", "3", "", ""),
        ("InfoPrompt", "mrpc", "steps_to_95pct"): ("3", "3", "8.3333", "2.8868"),
        ("WARP", "rte", "accuracy"): ("2", "3", "62.0000", "2.8284"),
        ("WARP", "mrpc", "accuracy"): ("0", "3", "", ""),
        ("WARP", "mrpc", "f1"): ("0", "3", "", ""),
        ("WARP", "Average", "main"): ("", "", "", ""),
        ("WARP", "rte", "steps_to_95pct"): ("0", "3", "", ""),
        ("WARP", "mrpc", "steps_to_95pct"): ("0", "3", "", ""),
    }
    assert {(r["few_shot"], r["num_tokens"]) for r in rows} == {("0", "4")}


def test_steps_to_95pct_is_the_first_eval_at_95pct_of_the_final_one():
    records = [
        {"step": 4, "train_loss": 1.0},
        {"step": 8, "eval_accuracy": 0.5},
        {"step": 16, "eval_accuracy": 0.86},
        {"step": 24, "eval_accuracy": 0.95},
        {"step": 32, "eval_accuracy": 0.9},
    ]
    assert report.steps_to_fraction(records, "eval_accuracy") == 16  # 0.86 >= 0.95 * 0.9.
    assert report.steps_to_fraction(records[:1], "eval_accuracy") is None


def test_report_best(report_root):
    markdown = report.write_report(report_root, select="best")
    assert "| InfoPrompt | 76.0 ± 1.0 | 90.0 ± 0.0 / 95.0 ± 0.0 | 83.0 |" in markdown
    assert "| WARP | 65.0 ± 0.0 (n=2) | – | – |" in markdown


def test_report_one_seed_and_several_settings(tmp_path):
    grid = grids.normalize_grid(
        {**REPORT_GRID, "tasks": {"cola": "configs/cola.py"}, "few_shot": [64, 256], "seeds": [0]},
        "one",
    )
    for cell in grids.expand(grid):
        grids.write_cell_json(cell, tmp_path)
        score = 0.1234 if cell.few_shot == 64 else 0.5
        (cell.workdir(tmp_path) / "summary.json").write_text(json.dumps({"eval_mcc": score}))
    markdown = report.write_report(tmp_path)
    assert markdown.index("## Few-shot k = 64, n_p = 4") < markdown.index("## Few-shot k = 256")
    assert "| InfoPrompt | 12.3 | 12.3 |" in markdown
    assert "| WARP | 50.0 | 50.0 |" in markdown
    assert "CoLA Matthews correlation" in markdown


def test_report_cli(report_root):
    result = subprocess.run(
        [sys.executable, "-m", "infoprompt_jax.report", f"--root={report_root}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert EXPECTED_TABLE in result.stdout
    assert (report_root / "results.csv").exists()


def test_report_on_an_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="No cell.json"):
        report.write_report(tmp_path)


def test_run_command_logs_and_returns_the_status(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("earlier attempt\n")
    command = [
        sys.executable,
        "-c",
        "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)",
    ]
    assert experiments.run_command(command, log) == 3
    text = log.read_text()
    assert text.startswith("earlier attempt\n")  # A rerun appends: the resumed run's log follows.
    assert "out\n" in text and "err\n" in text and shlex.join(command) in text
