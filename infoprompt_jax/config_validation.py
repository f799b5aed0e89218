"""Range and choice checks of a run config, before any work: no workdir is created and no
encoder loaded for a bad value (`config_loading.load` calls `validate`).

Each error names the field, its value and the allowed range or choices, so a typo costs seconds
instead of an epoch of training (a zero `log_every_steps` used to divide by zero at the first log, and a
negative `max_eval_examples` silently dropped dev rows through `examples[:-n]`).
"""

import ml_collections
from absl import logging

from infoprompt_jax.data import sources, tasks
from infoprompt_jax.model import encoder, idpg, methods, models
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
# (field, allowed values): every value must be one of them.
_CHOICES = (
    ("method", methods.METHODS),
    ("variant", ("paper", "released")),
    ("model.dtype", ("float32", "bfloat16")),
    ("model.attention", encoder.ATTENTION_KINDS),
    ("data.source", sources.SOURCES),
    ("prompt.init", ("random", "mask", "vocab", "phrase")),
    ("prompt.generator_activation", ("none", "gelu")),
    ("loss.critic", ("bilinear", "scaled_dot")),
    ("loss.head_negatives", ("sampled", "all_context")),
    ("loss.representation_negatives", models.REPRESENTATION_NEGATIVES),
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
    """Raises ValueError naming the first field outside its range or choices; warns on a tiny
    max_len."""
    try:
        tasks.get_task(config.task)
    except KeyError as e:
        raise ValueError(f"config.task={config.task!r}: {e.args[0]}.") from None
    for field, allowed in _CHOICES:
        value = _get(config, field)
        if value not in allowed:
            raise ValueError(
                f"config.{field}={value!r}; choose one of {', '.join(map(repr, allowed))}."
            )
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
    hf_path = config.data.get("hf_path", "")
    if hf_path and config.data.source != "hf":
        raise ValueError(
            f"config.data.hf_path={hf_path!r} is read by the Hugging Face source only, and"
            f" config.data.source={config.data.source!r}: add --config.data.source=hf, or drop"
            " the hf_path."
        )
    _validate_idpg(config)
    if config.max_len < _SHORT_MAX_LEN:
        logging.warning(
            "config.max_len=%d leaves room for a token or two of text once the template's "
            "special tokens, prompt slots and mask are placed; most texts will be cut to almost "
            "nothing. The paper uses 128.",
            config.max_len,
        )


def _validate_idpg(config: ml_collections.ConfigDict) -> None:
    """IDPG's generator fields: m >= 1, n >= 1 dividing m, idpg_layers only for method=idpg.

    That n divides the encoder width d (and so n_p * d) is checked where d is known, before the
    encoder loads (`components.build_components`).
    """
    model = config.model
    layers = model.get("idpg_layers", "input")
    if layers not in idpg.IDPG_LAYERS:
        raise ValueError(
            f"config.model.idpg_layers={layers!r}; choose one of {idpg.IDPG_LAYERS} "
            "(input: S-IDPG, all: M-IDPG)."
        )
    if layers != "input" and config.method != "idpg":
        raise ValueError(
            f"config.model.idpg_layers={layers!r} is an IDPG option but "
            f"config.method={config.method!r}: set --config.method=idpg or drop idpg_layers."
        )
    if config.method == "idpg":
        hidden, phm_n = model.get("idpg_hidden", 256), model.get("idpg_phm_n", 16)
        for field, value in (("idpg_hidden", hidden), ("idpg_phm_n", phm_n)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config.model.{field}={value!r}: give an integer >= 1.")
        if hidden % phm_n:
            raise ValueError(
                f"config.model.idpg_phm_n={phm_n} does not divide config.model.idpg_hidden="
                f"{hidden} (m): pick n dividing m and the encoder width (e.g. 16 or 8)."
            )
