"""Which runs may train together in one stack, decided from their configs alone.

A stack is several runs of one config that differ only in `PER_RUN_FIELDS` (the seed and
InfoPrompt's loss weights); a separate run is a stack of one. These predicates read nothing but
configs, so the grid runner can group its cells without importing the training loop.
"""

from collections.abc import Sequence
from typing import Any

import ml_collections

from infoprompt_jax import config_loading

# Methods whose frozen tree depends on the seed (adapters load with the encoder) or that train
# the encoder itself: nothing would be shared.
UNSTACKABLE_METHODS = ("adapter", "finetune")
# The config fields stacked runs may differ in: per-run arrays of the one compiled step.
PER_RUN_FIELDS = ("seed", "loss.beta", "loss.gamma")


def run_identity(config: ml_collections.ConfigDict) -> tuple[int, float, float]:
    """(seed, beta, gamma): what tells the runs of a stack apart."""
    return int(config.seed), float(config.loss.beta), float(config.loss.gamma)


def rows_can_stack(config: ml_collections.ConfigDict) -> bool:
    """Whether runs of this config may differ in loss.beta / loss.gamma within a stack: only
    InfoPrompt's paper variant reads them (other methods ignore them, the released variant sets
    its own)."""
    return config.method == "infoprompt" and config.variant == "paper"


def check_stackable(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Raises ValueError unless the configs differ only in `PER_RUN_FIELDS` and can stack (one
    config always can: a separate run is a stack of one)."""
    if len(configs) == 1:
        return
    identities = [run_identity(c) for c in configs]
    repeated = sorted({i for i in identities if identities.count(i) > 1})
    if repeated:
        raise ValueError(
            f"Stacked runs must be distinct runs; (seed, beta, gamma) {repeated} appear more "
            "than once."
        )
    first = shared_fields(configs[0])
    for config in configs[1:]:
        other = shared_fields(config)
        if other != first:
            changed = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            raise ValueError(
                f"Stacked runs must differ only in {', '.join(PER_RUN_FIELDS)}; the run "
                f"(seed, beta, gamma) = {run_identity(config)} also changes {changed}."
            )
    method, variant = configs[0].method, configs[0].variant
    if method in UNSTACKABLE_METHODS:
        raise ValueError(
            f"method={method} cannot stack seeds (its encoder weights are per "
            f"run); run its seeds separately. Stackable: methods other than {UNSTACKABLE_METHODS}."
        )
    weights = {identity[1:] for identity in identities}
    if len(weights) > 1 and not rows_can_stack(configs[0]):
        raise ValueError(
            f"Runs stacked with different loss.beta / loss.gamma {sorted(weights)} must be "
            f"method=infoprompt, variant=paper (got method={method}, variant={variant}): other "
            "methods ignore the weights and the released variant sets its own."
        )


def shared_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config's fields, flattened to dotted keys, less the ones stacked runs may differ in."""
    flat = config_loading.flatten(config)
    for field in PER_RUN_FIELDS:
        flat.pop(field)
    return flat


def union_config(configs: Sequence[ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
    """The first config with the runs' largest beta and gamma: its model has every critic that a
    stacked run uses (`methods.resolve` builds a critic when its weight is > 0)."""
    config = configs[0].copy_and_resolve_references()
    config.loss.beta = max(float(c.loss.beta) for c in configs)
    config.loss.gamma = max(float(c.loss.gamma) for c in configs)
    return config
