"""Learning curves: a metric against training steps for several runs (the paper's Figure 3).

Runs that share a label (by default the method with InfoPrompt's beta and gamma, so seeds of one
configuration share it) are drawn as their mean, with a band from their minimum to maximum (or
the mean plus and minus one standard deviation). The curves are aggregated over the steps that
every run of the label logged.

    python -m infoprompt_jax.analysis.curves --workdirs=W1,W2,... --metric=eval_accuracy \
        --output=FILE.png [--labels=a,b,...] [--band=minmax|std]
"""

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

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


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infoprompt_jax.analysis.curves",
        description="A metric against steps for several runs, runs of one label averaged "
        "(Figure 3).",
    )
    parser.add_argument("--workdirs", required=True, help="Comma-separated workdirs.")
    parser.add_argument(
        "--metric",
        default="eval_accuracy",
        help="A key of metrics.jsonl, e.g. eval_accuracy, eval_f1, train_loss.",
    )
    parser.add_argument("--output", required=True, help="The PNG to write.")
    parser.add_argument(
        "--labels",
        default="",
        help="Comma-separated label per workdir; runs sharing one are averaged "
        "(default: method, with beta and gamma for InfoPrompt).",
    )
    parser.add_argument(
        "--band",
        default="minmax",
        choices=BANDS,
        help="Band around the mean: the runs' min-max or +- one std.",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Aggregate]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workdirs = runs.split_list(args.workdirs)
    if not workdirs:
        raise ValueError("--workdirs names no workdir.")
    groups = group_runs(workdirs, args.metric, runs.split_list(args.labels) or None)
    aggregates = {label: aggregate(curves, args.band) for label, curves in groups.items()}
    plot(aggregates, args.metric, pathlib.Path(args.output), args.band)
    for label, agg in aggregates.items():
        print(
            f"{label}: {agg.num_runs} run(s), final {args.metric} {agg.mean[-1]:.4f} "
            f"at step {int(agg.steps[-1])}"
        )
    print(f"Wrote {args.output}.")
    return aggregates


if __name__ == "__main__":
    main()
