"""The train state and the pure, compiled train and eval steps.

`train_step(state, frozen, batch) -> (state, metrics)` is the whole of one optimisation step:
the frozen tree is an argument that is never differentiated and never reaches the optimizer.
`compile_steps` jits both steps once over a mesh: batch sharded on (data, fsdp), trainable state
replicated, frozen weights replicated or FSDP-sharded, the state donated.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from infoprompt_jax.model import models, objective
from infoprompt_jax.model import trainable as trainable_lib
from infoprompt_jax.train import sharding

Params = Any
Batch = Mapping[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
    """Everything a step changes: checkpointed whole (the frozen encoder is not in it)."""

    step: jax.Array
    trainable: Params
    opt_state: optax.OptState
    rng: jax.Array
    # The first step whose loss or gradients were not finite (0: none yet), and its loss. From
    # that step on, updates are skipped: the params stay the last finite ones, and the host
    # reads these two scalars only where it logs, evaluates or saves (no sync per step).
    diverged_at: jax.Array
    diverged_loss: jax.Array

    # Checkpoints written before divergence tracking lack these; restored, they read 0 (never
    # diverged), which is true of any run such a version saved (checkpointing.restore_latest).
    ZERO_IF_ABSENT: ClassVar[tuple[str, ...]] = ("diverged_at", "diverged_loss")


def create_train_state(
    trainable: Params, optimizer: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    """A state at step 0."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        trainable=trainable,
        opt_state=optimizer.init(trainable),
        rng=rng,
        diverged_at=jnp.zeros((), jnp.int32),
        diverged_loss=jnp.zeros((), jnp.float32),
    )


def train_step(
    state: TrainState,
    frozen: Params,
    batch: Batch,
    *,
    model: models.InfoPromptModel,
    optimizer: optax.GradientTransformation,
    loss_weights: objective.ObjectiveWeights,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step on the InfoPrompt objective.

    A step whose loss or gradients are not finite changes nothing but `step` and records itself
    in `diverged_at` / `diverged_loss`; so do all steps after it (see `divergence`).
    """
    # Keyed by step, so a resumed run draws the same negatives and noise as an unbroken one.
    step_key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(trainable):
        params = trainable_lib.merge_params(trainable, frozen)
        terms = model.apply({"params": params}, batch, step_key)
        return objective.infoprompt_objective(terms, loss_weights), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    new_state = apply_if_finite(state, loss, grads, updates, opt_state)
    return new_state, step_metrics(loss, terms, grads, batch["label"])


def apply_if_finite(
    state: TrainState, loss: jax.Array, grads: Params, updates: Params, opt_state: optax.OptState
) -> TrainState:
    """The state after the update, or, for a non-finite loss or gradient (or any step after
    one), the same params and optimizer state with the first such step recorded."""
    finite = jnp.isfinite(loss) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    )
    first_bad = (state.diverged_at == 0) & ~finite
    healthy = finite & (state.diverged_at == 0)

    def keep_if_unhealthy(new, old):
        return jax.tree.map(lambda n, o: jnp.where(healthy, n, o), new, old)

    return state.replace(
        step=state.step + 1,
        opt_state=keep_if_unhealthy(opt_state, state.opt_state),
        trainable=keep_if_unhealthy(optax.apply_updates(state.trainable, updates), state.trainable),
        diverged_at=jnp.where(first_bad, state.step + 1, state.diverged_at),
        diverged_loss=jnp.where(first_bad, loss.astype(jnp.float32), state.diverged_loss),
    )


def step_metrics(
    loss: jax.Array, terms: dict[str, jax.Array], grads: Params, label_B: jax.Array
) -> dict[str, jax.Array]:
    """What a step logs: the objective, each term's batch mean, accuracy and gradient norm."""
    correct_B = jnp.argmax(terms["logits"], axis=-1) == label_B
    return {
        "loss": loss,
        "ce": jnp.mean(terms["ce"]),
        "nce_rep": jnp.mean(terms["nce_rep"]),
        "nce_head": jnp.mean(terms["nce_head"]),
        "kl": jnp.mean(terms["kl"]),
        "accuracy": jnp.mean(correct_B.astype(jnp.float32)),
        "grad_norm": optax.tree.norm(grads),
    }


def divergence(state: TrainState) -> tuple[int, float] | None:
    """(step, loss) of the first non-finite step of a run, or None; one small host transfer."""
    diverged_at, loss = jax.device_get((state.diverged_at, state.diverged_loss))
    return (int(diverged_at), float(loss)) if diverged_at else None


def raise_if_diverged(state, workdir, last_saved: int, lr: float) -> None:
    """Stops a run whose loss or gradients became non-finite, naming the step and the value.

    Nothing after the last checkpoint is saved, evaluated or exported; rerunning the same command
    would resume there and diverge at the same step again, hence the advice of a new workdir.
    """
    diverged = divergence(state)
    if diverged is None:
        return
    step, loss = diverged
    kept = f"the checkpoint of step {last_saved}" if last_saved else "no checkpoint (none was due)"
    raise FloatingPointError(
        f"Training diverged at step {step}: loss {loss} (or a gradient) is not finite. {workdir} "
        f"keeps {kept}; nothing later was saved or evaluated. Rerunning resumes there and "
        f"diverges again: start a new --workdir with a lower config.optim.lr (now {lr:g}), or "
        "check the data."
    )


def eval_step(
    trainable: Params, frozen: Params, batch: Batch, *, model: models.InfoPromptModel
) -> jax.Array:
    """Class logits `[B, C]`, deterministic."""
    params = trainable_lib.merge_params(trainable, frozen)
    return model.apply({"params": params}, batch)["logits"]


def prompt_step(
    trainable: Params, frozen: Params, batch: Batch, *, model: models.InfoPromptModel
) -> jax.Array:
    """The prompts `[B, n_p, D]` the model places at the prompt slots for `batch`."""
    params = trainable_lib.merge_params(trainable, frozen)

    def prompts(module, batch):
        generator_input = (
            module.unprompted_pass(batch)["generator_input"]
            if module.config.prompt_source == "generator"
            else None
        )
        return module.prompts(batch, generator_input)

    return model.apply({"params": params}, batch, method=prompts)


def unprompted_step(
    frozen: Params, batch: Batch, *, model: models.InfoPromptModel
) -> dict[str, jax.Array]:
    """P_src and Z0 `[B, D]` of the unprompted pass, which reads only frozen weights."""
    return model.apply({"params": frozen}, batch, method=models.InfoPromptModel.unprompted_pass)


def state_shardings(mesh: Mesh, state: TrainState) -> TrainState:
    """Trainable state (params, optimizer moments, step, rng) replicated."""
    return jax.tree.map(lambda _: sharding.replicated(mesh), state)


def compile_steps(
    model: models.InfoPromptModel,
    optimizer: optax.GradientTransformation,
    loss_weights: objective.ObjectiveWeights,
    mesh: Mesh,
    state: TrainState,
    frozen: Params,
) -> tuple[Callable, Callable]:
    """Jitted `train_step(state, frozen, batch)` and `eval_step(trainable, frozen, batch)`.

    Args:
        model, optimizer, loss_weights: bound statically into the steps.
        mesh: the device mesh.
        state, frozen: examples (arrays or ShapeDtypeStructs) that fix the shardings.
    """
    state_sh = state_shardings(mesh, state)
    frozen_sh = sharding.param_shardings(mesh, frozen)
    batch_sh = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    train = jax.jit(
        functools.partial(train_step, model=model, optimizer=optimizer, loss_weights=loss_weights),
        in_shardings=(state_sh, frozen_sh, batch_sh),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )
    evaluate = jax.jit(
        functools.partial(eval_step, model=model),
        in_shardings=(state_sh.trainable, frozen_sh, batch_sh),
        out_shardings=replicated,
    )
    return train, evaluate
