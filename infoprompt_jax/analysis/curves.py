"""Learning curves: a metric against training steps for several runs (the paper's Figure 3).

Runs that share a label (by default the method with InfoPrompt's beta and gamma, so seeds of one
configuration share it) are drawn as their mean, with a band from their minimum to maximum (or
the mean plus and minus one standard deviation). The curves are aggregated over the steps that
every run of the label logged.

    python -m infoprompt_jax.analysis.curves --workdirs=W1,W2,... --metric=eval_accuracy \
        --output=FILE.png [--labels=a,b,...] [--band=minmax|std]
"""

import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from absl import app, flags

from infoprompt_jax import cli
from infoprompt_jax.analysis import plotting, runs
from infoprompt_jax.workdir import workdir_files

BANDS = ("minmax", "std")


class Curve(NamedTuple):
    """One run's metric: `values[i]` was logged at `steps[i]` (steps increasing)."""

    steps: np.ndarray
    values: np.ndarray


class Aggregate(NamedTuple):
    """Runs of one label, aggregated per step: mean, band `[low, high]`, and how many runs."""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    num_runs: int


def metric_curve(records: Sequence[dict], metric: str, where: str = "run") -> Curve:
    """The curve of `metric` from metrics.jsonl records; a step logged twice keeps its last value.

    Raises:
        ValueError: no record has the metric (the message lists those that do exist).
    """
    by_step = {int(r["step"]): float(r[metric]) for r in records if metric in r}
    if not by_step:
        known = sorted({k for r in records for k in r} - {"step"})
        raise ValueError(f"{where} logged no {metric!r}; its metrics are {known}.")
    steps = np.asarray(sorted(by_step))
    return Curve(steps, np.asarray([by_step[s] for s in steps]))


def aggregate(curves: Sequence[Curve], band: str = "minmax") -> Aggregate:
    """Mean and band over the steps every curve has.

    Args:
        curves: one or more runs' curves.
        band: "minmax" (the runs' range) or "std" (mean +- population standard deviation).
    """
    if band not in BANDS:
        raise ValueError(f"band={band!r}; choose one of {BANDS}.")
    steps = curves[0].steps
    for curve in curves[1:]:
        steps = np.intersect1d(steps, curve.steps)
    if not len(steps):
        raise ValueError("The runs share no logged step to average over.")
    values_RxT = np.stack([c.values[np.searchsorted(c.steps, steps)] for c in curves])
    mean = values_RxT.mean(axis=0)
    if band == "minmax":
        low, high = values_RxT.min(axis=0), values_RxT.max(axis=0)
    else:
        std = values_RxT.std(axis=0)
        low, high = mean - std, mean + std
    return Aggregate(steps, mean, low, high, len(curves))


def group_runs(
    workdirs: Sequence[str], metric: str, labels: Sequence[str] | None = None
) -> dict[str, list[Curve]]:
    """Curves grouped by label, in order of first appearance."""
    if labels and len(labels) != len(workdirs):
        raise ValueError(f"{len(labels)} labels for {len(workdirs)} workdirs.")
    groups: dict[str, list[Curve]] = {}
    for index, workdir in enumerate(workdirs):
        label = labels[index] if labels else runs.default_label(workdir_files.load_config(workdir))
        curve = metric_curve(workdir_files.read_metrics(workdir), metric, where=workdir)
        groups.setdefault(label, []).append(curve)
    return groups


def plot(
    aggregates: dict[str, Aggregate], metric: str, path: pathlib.Path, band: str = "minmax"
) -> None:
    """One mean line (with markers at logged steps) and shaded band per label."""
    plt = plotting.pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, agg in aggregates.items():
        name = f"{label} (n={agg.num_runs})" if agg.num_runs > 1 else label
        (line,) = axes.plot(agg.steps, agg.mean, marker="o", markersize=3, label=name)
        if agg.num_runs > 1:
            axes.fill_between(
                agg.steps, agg.low, agg.high, color=line.get_color(), alpha=0.2, linewidth=0
            )
    axes.set_xlabel("training step")
    band_note = {"minmax": "band: min-max over runs", "std": "band: mean +- std over runs"}[band]
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} ({band_note})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    plotting.save(figure, path)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""
    flags.DEFINE_string("workdirs", None, "Comma-separated workdirs.", flag_values=flag_values)
    flags.DEFINE_string(
        "metric",
        "eval_accuracy",
        "A key of metrics.jsonl, e.g. eval_accuracy, eval_f1, train_loss.",
        flag_values=flag_values,
    )
    flags.DEFINE_string("output", None, "The PNG to write.", flag_values=flag_values)
    flags.DEFINE_string(
        "labels",
        "",
        "Comma-separated label per workdir; runs sharing one are averaged "
        "(default: method, with beta and gamma for InfoPrompt).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "band",
        "minmax",
        BANDS,
        "Band around the mean: the runs' min-max or +- one std.",
        flag_values=flag_values,
    )
    flags.mark_flags_as_required(["workdirs", "output"], flag_values=flag_values)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, Aggregate]:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workdirs = runs.split_list(flag_values.workdirs)
    if not workdirs:
        raise ValueError("--workdirs names no workdir.")
    metric, band = flag_values.metric, flag_values.band
    groups = group_runs(workdirs, metric, runs.split_list(flag_values.labels) or None)
    aggregates = {label: aggregate(curves, band) for label, curves in groups.items()}
    plot(aggregates, metric, pathlib.Path(flag_values.output), band)
    for label, agg in aggregates.items():
        print(
            f"{label}: {agg.num_runs} run(s), final {metric} {agg.mean[-1]:.4f} "
            f"at step {int(agg.steps[-1])}"
        )
    print(f"Wrote {flag_values.output}.")
    return aggregates


if __name__ == "__main__":
    cli.run_command(define_flags, main)
