"""Times whole runs end to end: this checkout's defaults, an older commit's, and PyTorch eager.

```bash
python -m infoprompt_jax.tools.bench_end_to_end --model_dir=DIR --glue_dir=GLUE \
    [--task=sst2 --few_shot=256 --num_epochs=10 --baseline_commit=2a93c38 --rounds=1]
```

runs, one after the other, each as its own process on identical data (the task's GLUE files
under `--glue_dir`, the same `--few_shot` subset, every dev example evaluated after each epoch):

- `default`: `python -m infoprompt_jax.main` of this checkout with the config's defaults;
- `baseline`: the same command in `--baseline_commit` of this repository (extracted with
  `git archive` into a temporary directory), i.e. that commit's defaults and code;
- `torch`: `python -m infoprompt_jax.tools.torch_end_to_end`, the PyTorch eager run.

The JAX runs start with the persistent compilation cache off, so each pays its compiles as a
first run does. It prints a table: wall seconds of each process, its phases (the run summary's
`seconds`), its final dev metric, its speed-up over PyTorch, and the same for CPU seconds
(user + system of the process, which move less than wall seconds on a busy machine); `--results_json` also writes
them as JSON.
"""

import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from infoprompt_jax import cli
from infoprompt_jax.train import phase_timer
from infoprompt_jax.workdir import summary as summary_lib

GLUE_NAMES = {"sst2": "SST-2", "rte": "RTE"}
REPO = pathlib.Path(__file__).resolve().parents[2]
RUNS = ("torch", "baseline", "default")
# The phases of a run's summary, in the order the table shows them.
PHASES = phase_timer.PHASES


def config_flags(config_dir: pathlib.Path) -> list[str]:
    """The run's config flags: the task's config, the local data and the subset."""
    return [
        f"--config={config_dir / 'configs' / (flags.FLAGS.task + '.py')}",
        f"--config.model.name={flags.FLAGS.model_dir}",
        "--config.data.source=local",
        f"--config.data.dir={pathlib.Path(flags.FLAGS.glue_dir) / GLUE_NAMES[flags.FLAGS.task]}",
        f"--config.data.few_shot={flags.FLAGS.few_shot}",
        f"--config.train.num_epochs={flags.FLAGS.num_epochs}",
    ]


def checkout(commit: str, into: pathlib.Path) -> pathlib.Path:
    """The files of `commit` of this repository, extracted under `into`."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def child_cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], source: pathlib.Path, log: pathlib.Path) -> tuple[float, float]:
    """Runs `command` with `source` first on the path; its wall and CPU seconds (raises if it
    failed). CPU seconds move less than wall seconds when other work shares the machine."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    start, cpu_start = time.perf_counter(), child_cpu_seconds()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=source, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds, cpu = time.perf_counter() - start, child_cpu_seconds() - cpu_start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}); see {log}.")
    return seconds, cpu


def run_one(name: str, work: pathlib.Path, baseline: pathlib.Path | None, index: int) -> dict:
    """One run `name` (torch, baseline or default): wall seconds, phases and final metrics."""
    source = baseline if name == "baseline" else REPO
    out = work / f"{name}{index}"
    if name == "torch":
        summary_path = work / f"{name}{index}.json"
        command = [sys.executable, "-m", "infoprompt_jax.tools.torch_end_to_end"]
        command += config_flags(REPO) + [f"--output={summary_path}"]
    else:
        summary_path = summary_lib.path(out)
        command = [sys.executable, "-m", "infoprompt_jax.main", f"--workdir={out}"]
        command += config_flags(source) + ["--compile_cache=off"]
    wall, cpu = timed(command, source, work / f"{name}{index}.log")
    summary = json.loads(summary_path.read_text())
    metric = next(k for k in summary if k.startswith("eval_"))
    return {
        "run": name,
        "wall_s": wall,
        "cpu_s": cpu,
        "seconds": summary["seconds"],
        metric: summary[metric],
    }


def table(results: list[dict]) -> str:
    """A markdown table: wall seconds, phases, the final metric, and the speed-up over torch."""
    torch_walls = [r["wall_s"] for r in results if r["run"] == "torch"]
    torch_wall = min(torch_walls) if torch_walls else None
    torch_cpus = [r["cpu_s"] for r in results if r["run"] == "torch" and "cpu_s" in r]
    torch_cpu = min(torch_cpus) if torch_cpus else None
    metric = next(k for k in results[0] if k.startswith("eval_"))
    header = ["run", "wall s", *PHASES, "other", metric, "vs torch", "cpu s", "cpu vs torch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        phases = [r["seconds"].get(p, 0.0) for p in PHASES]
        if r["run"] == "torch":  # Its JAX-only setup (tokenizer, init draw) counts as data.
            phases[PHASES.index("data")] += r["seconds"].get("jax_setup", 0.0)
        speedup = f"{torch_wall / r['wall_s']:.2f}x" if torch_wall else ""
        cells = [r["run"], f"{r['wall_s']:.1f}", *(f"{p:.1f}" for p in phases)]
        cells += [f"{r['wall_s'] - sum(phases):.1f}", f"{r[metric]:.4f}", speedup]
        cpu = r.get("cpu_s")
        cells += [
            f"{cpu:.1f}" if cpu else "",
            f"{torch_cpu / cpu:.2f}x" if cpu and torch_cpu else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""
    flags.DEFINE_string(
        "model_dir", None, "The encoder checkpoint directory.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "glue_dir", None, "GLUE root: the task's files in GLUE_DIR/NAME.", flag_values=flag_values
    )
    flags.DEFINE_enum(
        "task", "sst2", ["sst2", "rte"], "The task (configs/TASK.py).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "few_shot", 256, "Training examples drawn with the seed.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "num_epochs", 10, "Epochs; the dev set is evaluated after each.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "baseline_commit",
        "2a93c38",
        "The commit whose defaults are the baseline ('' to skip).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "runs", ["torch", "baseline", "default"], "Which runs, in order.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "rounds", 1, "How many times to run the list, alternating.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "work_dir",
        "",
        "Where workdirs go (default: a temporary directory).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "results_json", "", "Also write the results here as JSON.", flag_values=flag_values
    )
    flags.mark_flags_as_required(["model_dir", "glue_dir"], flag_values=flag_values)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(flag_values.runs) - set(RUNS))
    if unknown:
        raise ValueError(f"--runs names {unknown}; choose from {', '.join(RUNS)}.")
    work = pathlib.Path(flag_values.work_dir or tempfile.mkdtemp(prefix="bench_e2e_"))
    work.mkdir(parents=True, exist_ok=True)
    baseline = None
    if "baseline" in flag_values.runs:
        if not flag_values.baseline_commit:
            raise ValueError("--runs has baseline but --baseline_commit is empty; name a commit.")
        baseline = checkout(flag_values.baseline_commit, work / "baseline_source")
    results = []
    for index in range(flag_values.rounds):
        for name in flag_values.runs:
            print(f"round {index + 1}: {name} ...", file=sys.stderr, flush=True)
            results.append(run_one(name, work, baseline, index))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(table(results))
    if flag_values.results_json:
        pathlib.Path(flag_values.results_json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    cli.run_command(define_flags, main)
