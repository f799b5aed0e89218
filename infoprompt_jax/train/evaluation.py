"""Evaluation at its floor: the dev set placed on the devices once, only the prompted pass run.

A few-shot run evaluates more examples than it trains on (SST-2: 872 dev examples per epoch
against 256 trained), so evaluation is where its time goes. `Evaluator` keeps that cost to the
FLOPs it must spend:

- the dev batches are cut and placed on the devices once, when the run starts, not at every
  evaluation: shortest rows first, each batch cut to the smallest of the eval length buckets
  that holds it (`eval_lengths`), so few padded tokens are computed;
- with the cached unprompted pass (`unprompted_cache`) a batch carries `P_src` and `Z0` and
  not the unprompted input, so an evaluation runs the prompted pass alone;
- every batch is dispatched before any result is read, and the logits come back to the host in
  one transfer at the end.

One `Evaluator` serves one run (`metrics`) or a stack of R runs (`stacked_metrics`), whose eval
step returns `[B, R, C]` logits for one shared batch.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from infoprompt_jax.data import metrics as metrics_lib
from infoprompt_jax.data import tasks
from infoprompt_jax.train import batching

Arrays = dict[str, np.ndarray]

# What the eval step reads when the unprompted pass is cached: the prompted input and the cache.
PROMPTED_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "prompt_positions",
    "mask_position",
    "cached_generator_input",
    "cached_z0",
)


def eval_lengths(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The lengths dev batches are cut to: `config.train.eval_length_buckets`, then `max_len`.

    Evaluation compiles a forward pass per length, far cheaper than a train step's, so it can
    afford finer buckets than training; configs without the field use `config.length_buckets`.
    """
    train_config = config.train
    buckets = train_config.get("eval_length_buckets", None)
    if buckets is None:
        return batching.run_lengths(config)
    return batching.bucket_lengths(config.max_len, buckets, "config.train.eval_length_buckets")


def eval_inputs(arrays: Arrays) -> Arrays:
    """The arrays an eval batch needs: with the cache, the prompted input alone (the unprompted
    one is not read, nor does it set the batch's length); without, all but the labels."""
    if "cached_generator_input" in arrays:
        return {name: arrays[name] for name in PROMPTED_KEYS}
    return {name: value for name, value in arrays.items() if name != "label"}


class DevSet:
    """The dev arrays as device batches, placed once.

    Attributes:
        batches: the device batches, shortest rows first, each cut to its bucket length.
        order: `[N]` the dev row of each batched row, in batch order.
        labels: `[N]` the dev labels, in the dev set's order.
    """

    def __init__(
        self,
        arrays: Arrays,
        batch_size: int,
        mesh: jax.sharding.Mesh,
        lengths: Sequence[int],
    ):
        """Batches `arrays` (dev arrays, label included) `batch_size` rows at a time."""
        self.labels = np.asarray(arrays["label"])
        inputs = eval_inputs(arrays)
        self.order = (
            batching.order_by_length(inputs) if len(lengths) > 1 else np.arange(len(self.labels))
        )
        padded, _ = batching.pad_to_multiple(
            {name: value[self.order] for name, value in inputs.items()}, batch_size
        )
        self.batches = [
            batching.device_batch(padded, np.arange(start, start + batch_size), mesh, lengths)
            for start in range(0, len(padded["input_ids"]), batch_size)
        ]

    def __len__(self) -> int:
        return len(self.labels)

    def padded_tokens(self) -> int:
        """Token positions the eval step computes per evaluation (rows x length, padding in)."""
        return sum(int(np.prod(batch["input_ids"].shape)) for batch in self.batches)


class Evaluator:
    """A run's (or a stack's) dev metrics from its eval step, on a `DevSet` placed once."""

    def __init__(
        self,
        eval_fn: Callable[[Any, Any, dict[str, jax.Array]], jax.Array],
        dev_arrays: Arrays,
        config: ml_collections.ConfigDict,
        mesh: jax.sharding.Mesh,
        task: tasks.TaskSpec,
    ):
        """Places the dev set on the devices.

        Args:
            eval_fn: `eval_fn(trainable, frozen, batch)`: logits `[B, C]` of one run, or
                `[B, R, C]` of a stack (`stacking.compile_stacked_steps`).
            dev_arrays: the encoded dev set, with the cached unprompted pass when the run uses it.
            config: the run's config (`train.eval_batch_size`, the eval length buckets).
            mesh: the device mesh.
            task: the task, whose metrics are computed.
        """
        self.eval_fn, self.task = eval_fn, task
        self.dev = DevSet(dev_arrays, config.train.eval_batch_size, mesh, eval_lengths(config))

    def logits(self, trainable: Any, frozen: Any) -> np.ndarray:
        """Logits `[N, ...]` of every dev row, in the dev set's order; one transfer to the host."""
        outputs = [self.eval_fn(trainable, frozen, batch) for batch in self.dev.batches]
        batched = np.concatenate(jax.device_get(outputs))[: len(self.dev)]
        logits = np.empty_like(batched)
        logits[self.dev.order] = batched
        return logits

    def scores(self, logits_NxC: np.ndarray) -> dict[str, float]:
        """The task's metrics of one run's logits, as `eval_<name>` keys."""
        scores = metrics_lib.compute_metrics(self.task, logits_NxC.argmax(-1), self.dev.labels)
        return {f"eval_{name}": value for name, value in scores.items()}

    def metrics(self, trainable: Any, frozen: Any) -> dict[str, float]:
        """One run's dev metrics, as `eval_<name>` keys."""
        return self.scores(self.logits(trainable, frozen))

    def stacked_metrics(self, trainables: Any, frozen: Any) -> list[dict[str, float]]:
        """Per run of a stack (`trainables` with a leading run axis), its dev metrics."""
        logits_NxRxC = self.logits(trainables, frozen)
        return [self.scores(logits_NxRxC[:, run]) for run in range(logits_NxRxC.shape[1])]
