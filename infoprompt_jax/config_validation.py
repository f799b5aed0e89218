"""Range checks of a run config, before any work: the encoder is not loaded for a bad value.

Each error names the field, its value and the allowed range, so a typo costs seconds instead of
an epoch of training (a zero `log_every_steps` used to divide by zero at the first log, and a
negative `max_eval_examples` silently dropped dev rows through `examples[:-n]`).
"""

import ml_collections
from absl import logging

from infoprompt_jax.train import batching, evaluation

# (field, lowest allowed value, what the value means): every value must be an int >= lowest.
_INT_RANGES = (
    ("seed", 0, "the run's seed"),
    ("max_len", 4, "tokens per sequence, specials and prompt slots included"),
    ("train.num_epochs", 1, "epochs"),
    ("train.batch_size", 1, "examples per step"),
    ("train.eval_batch_size", 1, "dev examples per compiled call"),
    ("train.eval_every_epochs", 1, "epochs between evaluations"),
    ("train.eval_every_steps", 0, "steps between evaluations (0: per eval_every_epochs)"),
    ("train.log_every_steps", 1, "steps between train-metric records"),
    ("train.checkpoint_every_steps", 0, "steps between checkpoints (0: every epoch end)"),
    ("train.keep_checkpoints", 1, "checkpoints kept (0 would leave nothing to resume or export)"),
    ("data.few_shot", 0, "training examples (0: the full set)"),
    ("data.max_eval_examples", 0, "dev examples (0: all)"),
    ("prompt.num_tokens", 1, "prompt tokens n_p"),
    ("loss.num_candidates", 2, "InfoNCE candidates K"),
)
# Below this many tokens per sequence, the template's specials, prompt slots and mask leave room
# for about one token of text: every text is cut to almost nothing.
_SHORT_MAX_LEN = 16


def _get(config: ml_collections.ConfigDict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first field outside its range; warns on a tiny max_len."""
    for field, lowest, meaning in _INT_RANGES:
        value = _get(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ValueError(
                f"config.{field}={value!r}: it is {meaning}; give an integer >= {lowest}."
            )
    for field in ("optim.lr", "optim.finetune_lr"):
        value = _get(config, field)
        if not value > 0:
            raise ValueError(f"config.{field}={value!r}: give a learning rate > 0.")
    for field in ("loss.beta", "loss.gamma"):
        value = _get(config, field)
        if not value >= 0:
            raise ValueError(f"config.{field}={value!r}: give a loss weight >= 0.")
    # Both bucket lists, checked here rather than at the first batch (evaluation.eval_lengths).
    evaluation.eval_lengths(config)
    batching.run_lengths(config)
    negatives = config.loss.representation_negatives
    if negatives != "unprompted" and config.train.batch_size < 2:
        raise ValueError(
            f"config.loss.representation_negatives={negatives!r} draws its negatives from the "
            f"other examples of a batch; config.train.batch_size={config.train.batch_size} has "
            "none: give a batch_size >= 2."
        )
    if config.max_len < _SHORT_MAX_LEN:
        logging.warning(
            "config.max_len=%d leaves room for a token or two of text once the template's "
            "special tokens, prompt slots and mask are placed; most texts will be cut to almost "
            "nothing. The paper uses 128.",
            config.max_len,
        )
