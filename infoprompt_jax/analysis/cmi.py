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

Two estimators (`--estimator=trained|held_out|both`, default both):

- trained: the run's own representation critic, `log K - NCE_rep` with the training K. That
  critic was trained to win at exactly this task, and it wins trivially when its negatives come
  from the unprompted pass: every learned prompt then scores the cap log K.
- held_out: a fresh critic (`mi_estimator.py`) fitted on the train split's pairs of mean prompt
  P_bar and prompted representation Z, and evaluated on the dev split's pairs against K_eval =
  min(256, dev examples) candidates. It bounds I(P_bar; Z) across examples, below log K_eval.
  The pairs to fit come from `--fit_examples` examples drawn from the whole train split (2048 by
  default), since the trained model makes a pair of any example: a few-shot run's 64 examples
  are too few to fit a critic that generalises (the early-stopped fit then keeps the zero critic,
  estimate 0).

    python -m infoprompt_jax.analysis.cmi --workdirs=W1,W2 --output=DIR [--estimator=both] \
        [--phrases="it is equivalent to;has the same meaning"] [--num_random=1] [--max_examples=N] \
        [--fit_examples=2048]

writes `DIR/cmi.csv` (source, estimator, example_index, cmi, cap) and `DIR/cmi.png` (a box per
source and estimator, each estimator's cap drawn) and prints each source's median and cap.
"""

import csv
import dataclasses
import functools
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from infoprompt_jax import cli
from infoprompt_jax.analysis import mi_estimator, plotting, prompt_eval, runs
from infoprompt_jax.model import losses, models
from infoprompt_jax.train import batching, sharding
from infoprompt_jax.workdir import workdir_files

DEFAULT_PHRASES = "it is equivalent to;has the same meaning"
ESTIMATORS = ("trained", "held_out")
HELD_OUT_CANDIDATES = 256
FIT_EXAMPLES = 2048


@dataclasses.dataclass(frozen=True)
class Result:
    """Per-example estimates of one (source, estimator), and the estimator's cap log K."""

    values: np.ndarray
    cap: float


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


def _prompt_and_representation(module, batch, prompts):
    if prompts is None:
        prompts = prompt_eval.own_prompts(module, batch)
    return jax.numpy.mean(prompts, axis=1), module.prompted_pass(batch, prompts)


@functools.partial(jax.jit, static_argnums=(0,))
def _pairs_fn(model, params, batch, prompts):
    return model.apply({"params": params}, batch, prompts, method=_prompt_and_representation)


def prompt_representation_pairs(
    model: models.InfoPromptModel,
    params: Any,
    arrays: dict[str, np.ndarray],
    batch_size: int,
    prompt_NxD: np.ndarray | None = None,
    lengths: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """(P_bar `[N, D]`, Z `[N, D]`): each example's mean prompt and prompted representation.

    With bucket `lengths` (the run's: `batching.run_lengths`), examples are batched shortest
    first and each batch is cut to the shortest bucket that holds it: the 2048 fit examples of
    a short-sentence task then cost a fraction of their `max_len` padding.
    """
    prompts = None
    if prompt_NxD is not None:
        prompts = np.broadcast_to(
            np.asarray(prompt_NxD, np.float32), (batch_size,) + np.shape(prompt_NxD)
        )
    one_device = sharding.make_mesh(devices=jax.local_devices()[:1])  # As the other passes.
    return batching.map_in_batches(
        lambda batch: _pairs_fn(model, params, batch, prompts),
        arrays,
        batch_size,
        one_device,
        lengths,
    )


def held_out_cmi(
    model, params, train_arrays, dev_arrays, batch_size, seed, prompt_NxD=None, lengths=()
):
    """`mi_estimator.held_out_estimate` of I(P_bar; Z), fitted on train, evaluated on dev."""
    train_pairs = prompt_representation_pairs(
        model, params, train_arrays, batch_size, prompt_NxD, lengths
    )
    dev_pairs = prompt_representation_pairs(
        model, params, dev_arrays, batch_size, prompt_NxD, lengths
    )
    estimate = mi_estimator.held_out_estimate(
        *train_pairs, *dev_pairs, num_candidates=HELD_OUT_CANDIDATES, seed=seed
    )
    return Result(estimate.per_example, estimate.cap)


def estimate_source(
    components,
    params,
    dev_arrays,
    train_arrays,
    key,
    batch_size,
    seed,
    estimators,
    name,
    prompt_NxD=None,
) -> dict[tuple[str, str], Result]:
    """The estimates of one prompt source (a run's own prompts when `prompt_NxD` is None)."""
    results = {}
    if "trained" in estimators:
        values = estimate_cmi(components.model, params, dev_arrays, key, batch_size, prompt_NxD)
        cap = math.log(components.config.loss.num_candidates)
        results[(name, "trained")] = Result(values, cap)
    if "held_out" in estimators:
        results[(name, "held_out")] = held_out_cmi(
            components.model,
            params,
            train_arrays,
            dev_arrays,
            batch_size,
            seed,
            prompt_NxD,
            batching.run_lengths(components.config),
        )
    return results


def has_representation_critic(config: ml_collections.ConfigDict) -> bool:
    """Whether the run trained a representation critic (InfoPrompt with beta > 0)."""
    return config.method == "infoprompt" and config.loss.beta > 0


def require_representation_critic(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises unless the run trained a representation critic (InfoPrompt with beta > 0)."""
    if not has_representation_critic(config):
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
    estimators: Sequence[str] = ESTIMATORS,
    fit_examples: int = FIT_EXAMPLES,
) -> dict[tuple[str, str], Result]:
    """Per-example CMI estimates of every prompt source and estimator, in plot order.

    `fit_examples`: the held-out critic fits the pairs of this many examples drawn (by `seed`)
    from the whole train split; 0 fits the run's own training examples (its few-shot subset).

    Returns:
        (source name, estimator) -> its `Result` over the dev examples (the first N with
        max_examples; held_out: the examples of its whole groups of K_eval).
    """
    configs = [workdir_files.load_config(w) for w in workdirs]
    if "trained" in estimators:  # The first run's critic scores the fixed prompts too.
        require_representation_critic(configs[0], workdirs[0])  # Before any slow restore.
    labels = list(labels) if labels else [runs.default_label(c) for c in configs]
    if len(labels) != len(workdirs):
        raise ValueError(f"{len(labels)} labels for {len(workdirs)} workdirs.")
    labels = runs.unique_labels(labels, workdirs)
    key = jax.random.PRNGKey(seed)
    learned, fixed = {}, {}
    for index, (workdir, label) in enumerate(zip(workdirs, labels)):
        components, params = runs.restore_run(workdir)
        arrays = runs.encode_examples(components, "dev", max_examples)
        train_arrays = None
        if "held_out" in estimators:
            train_arrays = (
                runs.encode_split_sample(components, "train", fit_examples, seed)
                if fit_examples
                else runs.encode_examples(components, "train")
            )

        # A run without a representation critic (beta = 0, baselines): the held-out one only.
        run_estimators = [
            e for e in estimators if e != "trained" or has_representation_critic(configs[index])
        ]
        estimate = functools.partial(
            estimate_source,
            components,
            params,
            arrays,
            train_arrays,
            key,
            batch_size,
            seed,
            run_estimators,
        )
        learned.update(estimate(f"learned: {label}"))
        if index:
            continue
        table = runs.word_embedding_table(params)
        num_tokens = components.method.model.num_prompt_tokens
        for draw in range(num_random):
            name = "random" if num_random == 1 else f"random #{draw}"
            fixed.update(estimate(name, random_prompt(table, num_tokens, seed=seed * 1000 + draw)))
        for phrase in phrases:
            prompt = phrase_prompt(components.tokenizer, table, phrase, num_tokens)
            fixed.update(estimate(f'phrase: "{phrase}"', prompt))
    return {**learned, **fixed}


def write_csv(results: dict[tuple[str, str], Result], path: pathlib.Path) -> None:
    """One row per (source, estimator, dev example): `source, estimator, example_index, cmi, cap`."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "estimator", "example_index", "cmi", "cap"])
        for (source, estimator), result in results.items():
            # Nine significant digits: float32 values survive the round trip exactly.
            writer.writerows(
                (source, estimator, i, f"{v:.9g}", f"{result.cap:.9g}")
                for i, v in enumerate(result.values)
            )


def read_csv(path: str | pathlib.Path) -> dict[tuple[str, str], Result]:
    """The inverse of `write_csv`."""
    rows: dict[tuple[str, str], list[tuple[int, float]]] = {}
    caps = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["source"], row["estimator"])
            rows.setdefault(key, []).append((int(row["example_index"]), float(row["cmi"])))
            caps[key] = float(row["cap"])
    return {
        key: Result(np.asarray([v for _, v in sorted(pairs)]), caps[key])
        for key, pairs in rows.items()
    }


def plot(results: dict[tuple[str, str], Result], path: pathlib.Path) -> None:
    """A box per source and estimator; a line at each estimator's cap log K."""
    plt = plotting.pyplot()
    estimators = list(dict.fromkeys(estimator for _, estimator in results))
    sources = list(dict.fromkeys(source for source, _ in results))
    figure, axes = plt.subplots(figsize=(1.6 + 1.3 * len(sources) * len(estimators), 4.8))
    colors = {"trained": "tab:blue", "held_out": "tab:orange"}
    width = 0.8 / len(estimators)
    for e, estimator in enumerate(estimators):
        keys = [(s, estimator) for s in sources if (s, estimator) in results]
        positions = [
            sources.index(s) + 1 + (e - (len(estimators) - 1) / 2) * width for s, _ in keys
        ]
        boxes = axes.boxplot(
            [results[k].values for k in keys],
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=False,
        )
        for box in boxes["boxes"]:
            box.set_facecolor(colors.get(estimator, "gray"))
            box.set_alpha(0.6)
        cap = results[keys[0]].cap
        axes.axhline(
            cap,
            color=colors.get(estimator, "gray"),
            linestyle="--",
            linewidth=1,
            label=f"{estimator}: cap log K = {cap:.2f} (K = {round(math.exp(cap))})",
        )
    axes.set_xticks(range(1, len(sources) + 1), sources, rotation=25, ha="right")
    axes.legend(loc="best", fontsize=8)
    axes.set_ylabel("MI estimate, log K - NCE (nats)")
    axes.set_title("Prompt information per dev example, trained and held-out critics")
    axes.grid(axis="y", alpha=0.3)
    plotting.save(figure, path)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""

    def define(kind, name, default, help_text):
        kind(name, default, help_text, flag_values=flag_values)

    define(
        flags.DEFINE_string,
        "workdirs",
        None,
        "Comma-separated InfoPrompt workdirs (beta > 0); the first one's model and critic also "
        "score the random and hand-written prompts.",
    )
    define(flags.DEFINE_string, "output", None, "Directory for cmi.csv and cmi.png.")
    define(
        flags.DEFINE_string,
        "labels",
        "",
        "Comma-separated names of the runs (default: method, beta, gamma).",
    )
    define(
        flags.DEFINE_string,
        "phrases",
        DEFAULT_PHRASES,
        "Semicolon-separated hand-written prompts ('' for none).",
    )
    define(flags.DEFINE_integer, "num_random", 1, "Random prompts to draw.")
    flags.DEFINE_enum(
        "estimator",
        "both",
        ["trained", "held_out", "both"],
        "trained: the run's own critic (capped at log K of training); held_out: a fresh critic "
        "fitted on train pairs, evaluated on dev with K_eval = min(256, dev) candidates.",
        flag_values=flag_values,
    )
    define(
        flags.DEFINE_integer,
        "max_examples",
        0,
        "Use the first N dev examples (0: the run's whole dev set).",
    )
    define(
        flags.DEFINE_integer,
        "fit_examples",
        FIT_EXAMPLES,
        "held_out: fit the critic on the pairs of N examples drawn from the whole train split "
        "(0: the run's own training examples, e.g. its few-shot subset).",
    )
    define(flags.DEFINE_integer, "batch_size", 32, "Examples per forward pass.")
    define(
        flags.DEFINE_integer, "seed", 0, "Seed of the critic's sampling and of the random prompts."
    )
    flags.mark_flags_as_required(["workdirs", "output"], flag_values=flag_values)


def main(
    argv: list[str], flag_values: flags.FlagValues = flags.FLAGS
) -> dict[tuple[str, str], Result]:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workdirs = runs.split_list(flag_values.workdirs)
    if not workdirs:
        raise ValueError("--workdirs names no workdir.")
    estimator = flag_values.estimator
    estimators = ESTIMATORS if estimator == "both" else (estimator,)
    if flag_values.fit_examples < 0:
        raise ValueError(
            f"--fit_examples={flag_values.fit_examples}; give a count of train examples, or 0 "
            "for the run's own training examples."
        )
    results = compute(
        workdirs,
        runs.split_list(flag_values.labels) or None,
        runs.split_list(flag_values.phrases, ";"),
        flag_values.num_random,
        flag_values.max_examples,
        flag_values.seed,
        flag_values.batch_size,
        estimators,
        flag_values.fit_examples,
    )
    output = pathlib.Path(flag_values.output)
    output.mkdir(parents=True, exist_ok=True)
    write_csv(results, output / "cmi.csv")
    plot(results, output / "cmi.png")
    for (source, estimator), result in results.items():
        print(
            f"{source} [{estimator}]: median {np.median(result.values):.4f} nats, cap "
            f"{result.cap:.4f}, over {len(result.values)} examples"
        )
    print(f"Wrote {output / 'cmi.csv'} and {output / 'cmi.png'}.")
    return results


if __name__ == "__main__":
    cli.run_command(define_flags, main)
