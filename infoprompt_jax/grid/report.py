"""Tables of a grid's results, laid out like the paper's: `python -m infoprompt_jax.report`.

Reads every `cell.json` under ROOT (written by `infoprompt_jax.experiments`) with its run's
summary (`workdir/summary.py`), and writes `ROOT/results.md` (also printed) and `ROOT/results.csv`:

- one table per setting (full data or few-shot k, and n_p), in grid order;
- rows: the grid's rows (methods and ablations) in grid order; columns: its tasks, then Average;
- a value: the dev metric x 100, mean ± sample std (ddof=1) over seeds, one decimal; `(n=k)` when
  fewer seeds finished than the grid asked for, `–` when none did. Tasks with several metrics
  show them all, main first (MRPC: acc / F1, as in the paper);
- Average: the mean over the table's tasks of each task's main metric, when all have one.

`--select=final` (default) reports the last evaluation (`eval_<metric>`); `--select=best` the best
one (`best_eval_<main>`, other metrics at that step, from metrics.jsonl). results.csv has one line
per (setting, row, task, metric) with n, expected n, mean and std (x 100, 4 decimals), and
`Average` lines.

Convergence (the paper's "InfoPrompt converges faster", as a number): per row and task, the
steps a run takes to first reach 95% of its final dev score (main metric), mean ± std over seeds;
a table under each setting in results.md, and metric `steps_to_95pct` (in steps, not x 100) in
results.csv. Runs that evaluate often (`train.eval_every_steps`) resolve it finely.
"""

import csv
import dataclasses
import io
import json
import pathlib
import statistics
from collections.abc import Sequence
from typing import Any

from infoprompt_jax.data import tasks as tasks_lib
from infoprompt_jax.train import phase_timer
from infoprompt_jax.workdir import summary as summary_lib
from infoprompt_jax.workdir import workdir_files

TASK_NAMES = {
    "rte": "RTE",
    "mrpc": "MRPC",
    "cola": "CoLA",
    "sst2": "SST-2",
    "semeval": "SemEval",
    "ace_re": "ACE RE",
    "ace_ner": "ACE NER",
}
METRIC_NAMES = {
    "accuracy": "accuracy",
    "f1": "F1",
    "mcc": "Matthews correlation",
    "macro_f1": "macro-F1",
    "micro_f1": "micro-F1",
}
METRIC_SHORT = {
    "accuracy": "acc",
    "f1": "F1",
    "mcc": "MCC",
    "macro_f1": "macro-F1",
    "micro_f1": "micro-F1",
}
MISSING = "–"
CSV_FIELDS = ("few_shot", "num_tokens", "row", "task", "metric", "n", "expected_n", "mean", "std")


@dataclasses.dataclass
class Run:
    """One cell directory: its cell.json and the scores it reached (None: not finished)."""

    cell: dict[str, Any]
    scores: dict[str, float] | None
    steps_to_95pct: int | None = None


def task_metrics(task: str) -> tuple[str, ...]:
    """The metrics a task's column shows: the main one first, then the task's others."""
    spec = tasks_lib.get_task(task)
    return (spec.main_metric,) + tuple(m for m in spec.metrics if m != spec.main_metric)


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); delete it and rerun the grid to write it again."
        ) from e


def read_scores(workdir: pathlib.Path, task: str, select: str) -> dict[str, float] | None:
    """The run's scores in [0, 1] units by metric name; None while the run is unfinished."""
    summary = summary_lib.finished(workdir)
    if summary is None:
        return None
    metrics = task_metrics(task)
    if select == "final":
        values = {m: summary.get(f"eval_{m}") for m in metrics}
    else:
        at_best = workdir_files.eval_record_at(workdir, summary.get("best_step"))
        values = {m: at_best.get(f"eval_{m}") for m in metrics[1:]}
        values[metrics[0]] = summary.get(f"best_eval_{metrics[0]}")
    return {m: float(v) for m, v in values.items() if v is not None}


CONVERGENCE_FRACTION = 0.95
CONVERGENCE_METRIC = "steps_to_95pct"


def steps_to_fraction(
    records: Sequence[dict[str, Any]], metric: str, fraction: float = CONVERGENCE_FRACTION
) -> int | None:
    """The first eval step whose `metric` reaches `fraction` of the run's last eval's value.

    Args:
        records: metrics.jsonl's records; those with `metric` are the evaluations.
        metric: e.g. "eval_accuracy".
        fraction: of the final score (0.95: 95%).

    Returns:
        The step, or None when the run has no evaluation.
    """
    evals = sorted((r["step"], r[metric]) for r in records if metric in r)
    if not evals:
        return None
    target = fraction * evals[-1][1]
    return next(step for step, value in evals if value >= target)


def load_runs(root: str | pathlib.Path, select: str = "final") -> list[Run]:
    """Every cell under `root` with its scores."""
    if select not in ("final", "best"):
        raise ValueError(f"select={select!r}; choose 'final' or 'best'.")
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--root={root}: no such directory; give the --root of a grid run.")
    runs = []
    for path in sorted(root.rglob("cell.json")):
        cell = _read_json(path)
        scores = read_scores(path.parent, cell["task"], select)
        steps = None
        if scores is not None:
            records = workdir_files.read_metrics(path.parent, missing_ok=True)
            steps = steps_to_fraction(records, f"eval_{task_metrics(cell['task'])[0]}")
        runs.append(Run(cell, scores, steps))
    return runs


@dataclasses.dataclass
class Stat:
    """Mean and sample std (x 100) of one metric over seeds."""

    n: int
    mean: float | None
    std: float | None


def summarize(values: Sequence[float], scale: float = 100.0) -> Stat:
    """Mean and sample std (ddof=1; None below 2 values) of values x `scale` ([0, 1] scores x 100)."""
    scaled = [scale * v for v in values]
    mean = statistics.fmean(scaled) if scaled else None
    std = statistics.stdev(scaled) if len(scaled) >= 2 else None
    return Stat(len(scaled), mean, std)


@dataclasses.dataclass
class Table:
    """One setting's table: stats[(row, task)][metric], in grid order."""

    few_shot: int
    num_tokens: int
    rows: list[str]
    tasks: list[str]
    expected_n: dict[tuple[str, str], int]
    stats: dict[tuple[str, str], dict[str, Stat]]
    convergence: dict[tuple[str, str], Stat] = dataclasses.field(default_factory=dict)

    @property
    def title(self) -> str:
        """E.g. "Full data, n_p = 4" or "Few-shot k = 256, n_p = 4"."""
        data = "Full data" if self.few_shot == 0 else f"Few-shot k = {self.few_shot}"
        return f"{data}, n_p = {self.num_tokens}"

    def average(self, row: str) -> float | None:
        """Mean over tasks of the row's main-metric means; None if a task has none."""
        means = [self.stats[row, task][task_metrics(task)[0]].mean for task in self.tasks]
        return None if any(m is None for m in means) else statistics.fmean(means)


def _ordered(pairs: set[tuple[int, str]]) -> list[str]:
    """Labels sorted by their grid position, first position wins."""
    seen = []
    for _, label in sorted(pairs):
        if label not in seen:
            seen.append(label)
    return seen


def build_tables(runs: Sequence[Run]) -> list[Table]:
    """Groups runs by setting, row and task and aggregates each metric over seeds."""
    settings = {}
    for run in runs:
        cell = run.cell
        key = (cell["setting_index"], cell["few_shot"], cell["num_tokens"])
        settings.setdefault(key, []).append(run)
    tables = []
    for (_, few_shot, num_tokens), group in sorted(settings.items()):
        rows = _ordered({(r.cell["row_index"], r.cell["row"]) for r in group})
        tasks = _ordered({(r.cell["task_index"], r.cell["task"]) for r in group})
        values, expected, steps = {}, {}, {}
        for run in group:
            key = (run.cell["row"], run.cell["task"])
            expected[key] = max(expected.get(key, 0), run.cell["num_seeds"])
            if run.steps_to_95pct is not None:
                steps.setdefault(key, []).append(run.steps_to_95pct)
            for metric, value in (run.scores or {}).items():
                values.setdefault(key, {}).setdefault(metric, []).append(value)
        stats = {
            (row, task): {
                m: summarize(values.get((row, task), {}).get(m, [])) for m in task_metrics(task)
            }
            for row in rows
            for task in tasks
        }
        convergence = {
            (row, task): summarize(steps.get((row, task), []), scale=1.0)
            for row in rows
            for task in tasks
        }
        tables.append(Table(few_shot, num_tokens, rows, tasks, expected, stats, convergence))
    return tables


def format_stat(stat: Stat) -> str:
    """A statistic as text: "72.0 ± 2.0", "72.0" (one seed) or "–"."""
    if stat.mean is None:
        return MISSING
    return f"{stat.mean:.1f}" if stat.std is None else f"{stat.mean:.1f} ± {stat.std:.1f}"


def format_cell(table: Table, row: str, task: str) -> str:
    """A table entry: every metric of the task joined by " / ", then `(n=k)` if seeds are missing."""
    stats = table.stats[row, task]
    metrics = task_metrics(task)
    if all(stats[m].mean is None for m in metrics):
        return MISSING
    text = " / ".join(format_stat(stats[m]) for m in metrics)
    n = stats[metrics[0]].n
    return text + (f" (n={n})" if n < table.expected_n.get((row, task), 0) else "")


def column_name(task: str) -> str:
    """A task's column header: "RTE", or "MRPC (acc/F1)" for tasks with several metrics."""
    name = TASK_NAMES.get(task, task.upper())
    metrics = task_metrics(task)
    return name if len(metrics) == 1 else f"{name} ({'/'.join(METRIC_SHORT[m] for m in metrics)})"


def table_markdown(table: Table) -> str:
    """One setting's markdown table under its title."""
    header = ["Method"] + [column_name(t) for t in table.tasks] + ["Average"]
    lines = [f"## {table.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        average = table.average(row)
        entries = [row] + [format_cell(table, row, t) for t in table.tasks]
        entries.append(MISSING if average is None else f"{average:.1f}")
        lines.append("| " + " | ".join(entries) + " |")
    return "\n".join(lines) + "\n"


def convergence_markdown(table: Table) -> str:
    """Steps to 95% of the final dev score per row and task, mean ± std over seeds."""
    header = ["Method"] + [TASK_NAMES.get(t, t.upper()) for t in table.tasks]
    lines = [
        f"### {table.title}: steps to {CONVERGENCE_FRACTION:.0%} of the final dev score",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in table.rows:
        entries = [row]
        for task in table.tasks:
            stat = table.convergence.get((row, task), Stat(0, None, None))
            text = MISSING if stat.mean is None else f"{stat.mean:.0f}"
            if stat.std is not None:
                text += f" ± {stat.std:.0f}"
            entries.append(text)
        lines.append("| " + " | ".join(entries) + " |")
    return "\n".join(lines) + "\n"


def legend(tables: Sequence[Table], select: str, num_unfinished: int) -> str:
    """What the numbers are, for the top of results.md."""
    which = (
        f"the final evaluation (`eval_<metric>` of {summary_lib.FILE})"
        if select == "final"
        else f"the best evaluation (`best_eval_<main metric>` of {summary_lib.FILE}; other metrics at that "
        "step)"
    )
    task_list = list(dict.fromkeys(t for table in tables for t in table.tasks))
    metrics = "; ".join(
        f"{TASK_NAMES.get(t, t.upper())} {' / '.join(METRIC_NAMES[m] for m in task_metrics(t))}"
        for t in task_list
    )
    text = (
        f"Dev-set scores of {which}, x 100: mean ± sample standard deviation (ddof=1) over "
        f"seeds. `(n=k)`: only k of the grid's seeds have finished; `{MISSING}`: none has. "
        f"Metrics: {metrics}. Average: the mean over the table's tasks of each task's main "
        f"metric (the first one shown), when every task has a result."
    )
    if num_unfinished:
        cells = "1 cell has" if num_unfinished == 1 else f"{num_unfinished} cells have"
        text += (
            f"\n\n{cells} no {summary_lib.FILE} yet (running, failed or preempted) and "
            f"{'is' if num_unfinished == 1 else 'are'} left out."
        )
    return text + "\n"


def to_markdown(tables: Sequence[Table], select: str, num_unfinished: int = 0) -> str:
    """results.md: the legend, then one table per setting."""
    parts = ["# Results\n", legend(tables, select, num_unfinished)]
    for table in tables:
        parts += [table_markdown(table), convergence_markdown(table)]
    return "\n".join(parts)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def to_csv(tables: Sequence[Table]) -> str:
    """results.csv: one line per (setting, row, task, metric), then the row's Average."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for table in tables:
        for row in table.rows:
            for task in table.tasks:
                for metric, stat in table.stats[row, task].items():
                    writer.writerow(
                        [
                            table.few_shot,
                            table.num_tokens,
                            row,
                            task,
                            metric,
                            stat.n,
                            table.expected_n.get((row, task), 0),
                            _number(stat.mean),
                            _number(stat.std),
                        ]
                    )
                stat = table.convergence.get((row, task), Stat(0, None, None))
                writer.writerow(
                    [
                        table.few_shot,
                        table.num_tokens,
                        row,
                        task,
                        CONVERGENCE_METRIC,
                        stat.n,
                        table.expected_n.get((row, task), 0),
                        _number(stat.mean),
                        _number(stat.std),
                    ]
                )
            writer.writerow(
                [
                    table.few_shot,
                    table.num_tokens,
                    row,
                    "Average",
                    "main",
                    "",
                    "",
                    _number(table.average(row)),
                    "",
                ]
            )
    return buffer.getvalue()


def write_report(root: str | pathlib.Path, select: str = "final") -> str:
    """Writes ROOT/results.md and ROOT/results.csv; returns the markdown."""
    runs = load_runs(root, select)
    if not runs:
        raise FileNotFoundError(
            f"No cell.json under {root}; run `python -m infoprompt_jax.experiments "
            f"--grid=... --root={root}` first."
        )
    tables = build_tables(runs)
    markdown = to_markdown(tables, select, sum(run.scores is None for run in runs))
    root = pathlib.Path(root)
    (root / "results.md").write_text(markdown)
    (root / "results.csv").write_text(to_csv(tables))
    return markdown


def timings_report(root: str | pathlib.Path) -> str:
    """The seconds per phase (the summaries' `seconds`) summed over the cells under `root`."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--root={root}: no such directory; give the --root of a grid run.")
    summaries = summary_lib.read_all(path.parent for path in sorted(root.rglob("cell.json")))
    return phase_timer.format_timings(*phase_timer.sum_timings(summaries))
