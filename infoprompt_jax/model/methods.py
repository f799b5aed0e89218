"""A method is a model config, loss weights and a trainable set; this module maps config to them.

InfoPrompt and its ablations, IDPG, WARP, Adapter and Fine-tuning all run the same model and the
same train step (docs/design.md, "What trains"); only what this module returns differs.
"""

import dataclasses

import ml_collections

from infoprompt_jax.model import models, objective
from infoprompt_jax.model import trainable as trainable_lib

# Every method has one trainable/frozen rule table; the methods are its keys.
METHODS = tuple(trainable_lib.METHOD_RULES)

# The authors' released code, as knobs (docs/design.md, "The released code, and
# `variant=released`").
RELEASED_VARIANT = {
    "prompt.generator_rank": 32,
    "loss.beta": 0.2,
    "loss.gamma": 0.1,
    "loss.critic": "scaled_dot",
    "loss.head_negatives": "all_context",
    "loss.nce_clamp": 2.0,
    "loss.head_bottleneck_dim": 32,
    "loss.kl_weight": 0.1,
    "loss.representation_negatives": "unprompted",
}


@dataclasses.dataclass(frozen=True)
class Method:
    """What a config trains and how."""

    name: str
    model: models.ModelConfig
    loss_weights: objective.ObjectiveWeights
    peak_lr: float
    adapter_size: int


def apply_released_variant(config: ml_collections.ConfigDict) -> None:
    """Sets every knob of the released-code variant (config.variant == "released")."""
    for dotted, value in RELEASED_VARIANT.items():
        section, field = dotted.split(".")
        config[section][field] = value


def _generator(method: str, variant: str) -> str:
    """The generator kind: IDPG's own for method=idpg, else InfoPrompt's of the variant."""
    if method == "idpg":
        return "idpg"
    return "released" if variant == "released" else "paper"


def resolve(config: ml_collections.ConfigDict, num_classes: int, has_mlm_transform: bool) -> Method:
    """The `Method` a config describes.

    Args:
        config: the run config (configs/default.py).
        num_classes: C of the task.
        has_mlm_transform: whether the encoder checkpoint has an MLM head.
    """
    name = config.method
    if name not in METHODS:
        raise ValueError(f"config.method={name!r}; choose one of {METHODS}.")
    if config.variant not in ("paper", "released"):
        raise ValueError(f"config.variant={config.variant!r}; choose 'paper' or 'released'.")
    beta, gamma = (config.loss.beta, config.loss.gamma) if name == "infoprompt" else (0.0, 0.0)
    prompt_source = {"infoprompt": "generator", "idpg": "generator", "warp": "free"}.get(
        name, "none"
    )
    num_prompt_tokens = config.prompt.num_tokens if prompt_source != "none" else 0
    if prompt_source != "none" and num_prompt_tokens < 1:
        raise ValueError(f"config.prompt.num_tokens={num_prompt_tokens}: {name} needs >= 1.")
    model_config = models.ModelConfig(
        num_classes=num_classes,
        num_prompt_tokens=num_prompt_tokens,
        prompt_source=prompt_source,
        generator=_generator(name, config.variant),
        generator_rank=config.prompt.generator_rank,
        # .get: configs written before IDPG had its own generator lack these fields.
        idpg_hidden=config.model.get("idpg_hidden", 256),
        idpg_phm_n=config.model.get("idpg_phm_n", 16),
        idpg_layers=config.model.get("idpg_layers", "input"),
        generator_bias=config.prompt.generator_bias,
        generator_activation=config.prompt.generator_activation,
        prompt_init_scale=config.prompt.init_scale,
        has_mlm_transform=has_mlm_transform,
        representation_dim=config.loss.representation_dim,
        num_candidates=config.loss.num_candidates,
        use_representation_critic=beta > 0,
        use_head_critic=gamma > 0,
        critic=config.loss.critic,
        head_negatives=config.loss.head_negatives,
        head_bottleneck_dim=config.loss.head_bottleneck_dim,
        representation_negatives=config.loss.representation_negatives,
    )
    loss_weights = objective.ObjectiveWeights(
        beta=beta,
        gamma=gamma,
        nce_clamp=config.loss.nce_clamp or None,
        kl_weight=config.loss.kl_weight if config.loss.head_bottleneck_dim else 0.0,
    )
    peak_lr = config.optim.finetune_lr if name == "finetune" else config.optim.lr
    adapter_size = config.model.adapter_size if name == "adapter" else 0
    return Method(name, model_config, loss_weights, peak_lr, adapter_size)
