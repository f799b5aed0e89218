"""AdamW with linear warmup and linear decay, clipped by global norm.

Warmup over 6% of the steps then linear decay to zero and weight decay 0 follow the authors'
released code and WARP; gradient-norm clip 1.0 (docs/design.md, "Defaults and where they come
from").
"""

import ml_collections
import optax


def learning_rate_schedule(peak_lr: float, total_steps: int, warmup_fraction: float = 0.06):
    """Linear warmup from 0 to `peak_lr` over `warmup_fraction` of the steps, then linear to 0."""
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps}: the schedule needs at least one step.")
    warmup_steps = max(1, int(round(warmup_fraction * total_steps)))
    decay_steps = max(1, total_steps - warmup_steps)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak_lr, warmup_steps),
            optax.linear_schedule(peak_lr, 0.0, decay_steps),
        ],
        boundaries=[warmup_steps],
    )


def make_optimizer(
    peak_lr: float,
    total_steps: int,
    *,
    warmup_fraction: float = 0.06,
    weight_decay: float = 0.0,
    clip_norm: float = 1.0,
) -> optax.GradientTransformation:
    """The optimizer of the trainable parameters (the frozen ones never reach it)."""
    schedule = learning_rate_schedule(peak_lr, total_steps, warmup_fraction)
    return optax.chain(
        optax.clip_by_global_norm(clip_norm), optax.adamw(schedule, weight_decay=weight_decay)
    )


def from_config(
    config: ml_collections.ConfigDict, peak_lr: float, total_steps: int
) -> optax.GradientTransformation:
    """A run's optimizer: `config.optim`'s warmup, weight decay and clip at the method's peak rate.

    Args:
        config: the run config.
        peak_lr: the method's peak learning rate (`methods.Method.peak_lr`).
        total_steps: the schedule's length. A restore target may pass 1: the optimizer state's
            structure does not depend on it.
    """
    return make_optimizer(
        peak_lr,
        total_steps,
        warmup_fraction=config.optim.warmup_fraction,
        weight_decay=config.optim.weight_decay,
        clip_norm=config.optim.clip_norm,
    )
