"""Conditional mutual information of prompts, I(P; Z | X): the paper's Figure 1.

For each dev example the estimate is the InfoNCE bound of the representation critic,
`log K - NCE_rep` (docs/design.md, step 6), for three kinds of prompt:

- learned: each run's own prompts, scored by that run's trained critic;
- random: one `[n_p, D]` Gaussian draw with the word-embedding matrix's per-dimension mean and
  standard deviation, the same for every example;
- hand-written: a phrase's word embeddings, cycled or truncated to n_p tokens.

Random and hand-written prompts replace the prompts of the first run, whose model and critic
score them. The critic's negatives come from the unprompted pass, as in training. The sampling
key is fixed and, batch for batch, the same for every source that shares a critic, so the sources
are compared on the same noise and a rerun gives the same numbers.

    python -m infoprompt_jax.analysis.cmi --workdirs=W1,W2 --output=DIR \
        [--phrases="it is equivalent to;has the same meaning"] [--num_random=1] [--max_examples=N]

writes `DIR/cmi.csv` (source, example_index, cmi) and `DIR/cmi.png` (a box per source) and
prints each source's median.
"""

import argparse
import csv
import functools
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from infoprompt_jax import batching, losses, models, workdir_files
from infoprompt_jax.analysis import plotting, prompt_eval, runs

DEFAULT_PHRASES = "it is equivalent to;has the same meaning"


def cmi_from_scores(scores_BxK: jax.Array) -> jax.Array:
    """The InfoNCE estimate of the mutual information, `log K - NCE`, per example.

    Args:
        scores_BxK: critic scores of K candidates, the positive first.

    Returns:
        `[B]` estimates, each at most `log K`.
    """
    return losses.mutual_information_bound(losses.info_nce(scores_BxK), scores_BxK.shape[-1])


def random_prompt(table_VxD: np.ndarray, num_tokens: int, seed: int) -> np.ndarray:
    """`[n_p, D]` drawn from N(mean, std^2) of the word embeddings, per dimension."""
    mean_D, std_D = table_VxD.mean(axis=0), table_VxD.std(axis=0)
    noise = np.random.default_rng(seed).standard_normal((num_tokens, table_VxD.shape[1]))
    return (mean_D + std_D * noise).astype(np.float32)


def phrase_prompt(
    tokenizer: Any, table_VxD: np.ndarray, phrase: str, num_tokens: int
) -> np.ndarray:
    """`[n_p, D]`: the phrase's word embeddings, cycled or truncated to n_p tokens.

    The phrase is tokenized as WARP's phrase initialisation does (`config.prompt.init=phrase`).
    """
    ids = tokenizer(phrase, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"The phrase {phrase!r} has no tokens.")
    return table_VxD[[ids[i % len(ids)] for i in range(num_tokens)]].astype(np.float32)


def batch_scores(
    model: models.InfoPromptModel,
    params: Any,
    batch: dict[str, np.ndarray],
    key: jax.Array,
    prompt_NxD: np.ndarray | None = None,
) -> jax.Array:
    """The representation critic's scores `[B, K]` of one batch, the positive first.

    Args:
        model, params: the run's model and full parameters.
        batch: tokenized examples with labels.
        key: the critic's sampling key.
        prompt_NxD: a fixed prompt for every example; None scores the run's own prompts.
    """
    batch_size = len(batch["input_ids"])
    if prompt_NxD is None:
        prompts = np.asarray(prompt_eval.own_prompts_fn(model, params, batch))
    else:
        prompts = np.broadcast_to(
            np.asarray(prompt_NxD, np.float32), (batch_size,) + np.shape(prompt_NxD)
        )
    # Own and fixed prompts alike enter as [B, n_p, D] host arrays (alike in placement too),
    # so one compiled program scores both.
    return prompt_eval.representation_scores(model, params, batch, key, prompts)


def estimate_cmi(
    model: models.InfoPromptModel,
    params: Any,
    arrays: dict[str, np.ndarray],
    key: jax.Array,
    batch_size: int,
    prompt_NxD: np.ndarray | None = None,
) -> np.ndarray:
    """Per-example `log K - NCE_rep` `[N]` over every row of `arrays`.

    Args:
        model, params: the run's model and full parameters.
        arrays: tokenized examples with labels.
        key: the fixed sampling key; batch i uses `fold_in(key, i)`.
        batch_size: examples per forward pass (the last batch is padded).
        prompt_NxD: a fixed prompt for every example; None scores the run's own prompts.
    """
    padded, count = batching.pad_to_multiple(arrays, batch_size)
    estimates = []
    for index, start in enumerate(range(0, len(padded["input_ids"]), batch_size)):
        batch = {name: value[start : start + batch_size] for name, value in padded.items()}
        scores_BxK = batch_scores(model, params, batch, jax.random.fold_in(key, index), prompt_NxD)
        estimates.append(np.asarray(cmi_from_scores(scores_BxK)))
    return np.concatenate(estimates)[:count]


def require_representation_critic(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises unless the run trained a representation critic (InfoPrompt with beta > 0)."""
    if config.method != "infoprompt" or not config.loss.beta > 0:
        raise ValueError(
            f"{workdir}: method={config.method}, loss.beta={config.loss.beta} has no trained "
            "representation critic, which the CMI estimate needs: pass InfoPrompt runs with "
            "beta > 0 (the first one also scores the random and hand-written prompts)."
        )


def compute(
    workdirs: Sequence[str],
    labels: Sequence[str] | None = None,
    phrases: Sequence[str] = (),
    num_random: int = 1,
    max_examples: int = 0,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Per-example CMI estimates of every prompt source, in plot order.

    Returns:
        source name -> `[N]` estimates over the dev examples (the first N with max_examples).
    """
    configs = [workdir_files.load_config(w) for w in workdirs]
    for config, workdir in zip(configs, workdirs):
        require_representation_critic(config, workdir)  # Before any slow restore.
    labels = list(labels) if labels else [runs.default_label(c) for c in configs]
    if len(labels) != len(workdirs):
        raise ValueError(f"{len(labels)} labels for {len(workdirs)} workdirs.")
    labels = runs.unique_labels(labels, workdirs)
    key = jax.random.PRNGKey(seed)
    learned, fixed = {}, {}
    for index, (workdir, label) in enumerate(zip(workdirs, labels)):
        components, params = runs.restore_run(workdir)
        arrays = runs.encode_examples(components, "dev", max_examples)
        estimate = functools.partial(
            estimate_cmi, components.model, params, arrays, key, batch_size
        )
        learned[f"learned: {label}"] = estimate()
        if index:
            continue
        table = runs.word_embedding_table(params)
        num_tokens = components.method.model.num_prompt_tokens
        for draw in range(num_random):
            name = "random" if num_random == 1 else f"random #{draw}"
            fixed[name] = estimate(random_prompt(table, num_tokens, seed=seed * 1000 + draw))
        for phrase in phrases:
            prompt = phrase_prompt(components.tokenizer, table, phrase, num_tokens)
            fixed[f'phrase: "{phrase}"'] = estimate(prompt)
    return {**learned, **fixed}


def write_csv(results: dict[str, np.ndarray], path: pathlib.Path) -> None:
    """One row per (source, dev example): `source, example_index, cmi`."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "example_index", "cmi"])
        for source, values in results.items():
            # Nine significant digits: float32 values survive the round trip exactly.
            writer.writerows((source, i, f"{v:.9g}") for i, v in enumerate(values))


def read_csv(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The inverse of `write_csv`: source -> estimates in example order."""
    rows: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            pair = (int(row["example_index"]), float(row["cmi"]))
            rows.setdefault(row["source"], []).append(pair)
    return {source: np.asarray([v for _, v in sorted(pairs)]) for source, pairs in rows.items()}


def plot(
    results: dict[str, np.ndarray], path: pathlib.Path, num_candidates: int | None = None
) -> None:
    """A box per prompt source; a dashed line at the bound's ceiling `log K` when given."""
    plt = plotting.pyplot()
    figure, axes = plt.subplots(figsize=(1.6 + 1.3 * len(results), 4.5))
    axes.boxplot(list(results.values()), showfliers=True)
    axes.set_xticks(range(1, len(results) + 1), list(results), rotation=25, ha="right")
    if num_candidates:
        axes.axhline(
            math.log(num_candidates),
            color="gray",
            linestyle="--",
            linewidth=1,
            label=f"log K (K={num_candidates})",
        )
        axes.legend(loc="best")
    axes.set_ylabel("CMI estimate  log K - NCE_rep  (nats)")
    axes.set_title("I(P; Z | X) per dev example")
    axes.grid(axis="y", alpha=0.3)
    plotting.save(figure, path)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infoprompt_jax.analysis.cmi",
        description="CMI estimates of learned, random and hand-written prompts (Figure 1).",
    )
    parser.add_argument(
        "--workdirs",
        required=True,
        help="Comma-separated InfoPrompt workdirs (beta > 0); the first one's "
        "model and critic also score the random and hand-written prompts.",
    )
    parser.add_argument("--output", required=True, help="Directory for cmi.csv and cmi.png.")
    parser.add_argument(
        "--labels",
        default="",
        help="Comma-separated names of the runs (default: method, beta, gamma).",
    )
    parser.add_argument(
        "--phrases",
        default=DEFAULT_PHRASES,
        help="Semicolon-separated hand-written prompts ('' for none).",
    )
    parser.add_argument("--num_random", type=int, default=1, help="Random prompts to draw.")
    parser.add_argument(
        "--max_examples",
        type=int,
        default=0,
        help="Use the first N dev examples (0: the run's whole dev set).",
    )
    parser.add_argument("--batch_size", type=int, default=32, help="Examples per forward pass.")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed of the critic's sampling and of the random prompts.",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workdirs = runs.split_list(args.workdirs)
    if not workdirs:
        raise ValueError("--workdirs names no workdir.")
    results = compute(
        workdirs,
        runs.split_list(args.labels) or None,
        runs.split_list(args.phrases, ";"),
        args.num_random,
        args.max_examples,
        args.seed,
        args.batch_size,
    )
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    write_csv(results, output / "cmi.csv")
    plot(results, output / "cmi.png", workdir_files.load_config(workdirs[0]).loss.num_candidates)
    for source, values in results.items():
        print(f"{source}: median CMI {np.median(values):.4f} nats over {len(values)} examples")
    print(f"Wrote {output / 'cmi.csv'} and {output / 'cmi.png'}.")
    return results


if __name__ == "__main__":
    main()
