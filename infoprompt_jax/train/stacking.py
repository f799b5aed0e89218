"""Several runs as one program: the train step vmapped over a leading run axis.

R runs that share a model, an optimizer and shapes (the seeds of a grid cell) train as one
compiled step: their trainable params, optimizer states, RNG keys and batches gain a leading
axis `[R, ...]`, while the frozen encoder is one tree passed to every run unbatched (never copied
per run). The step maps `steps.train_step` over the run axis, keeping each run's arithmetic its
own: run r's numbers are those of its separate run up to float rounding.

How the runs are mapped (`vectorize`): `jax.vmap` batches them into one wider program, which
fills an accelerator that a batch of 8 leaves idle; `jax.lax.map` runs them one after another
inside the program, which on a CPU (already busy with one run) is as fast as separate runs,
where vmap's batched matmuls measured 1.6x slower (eval of 3 MiniLM runs on 256 dev examples,
2 cores: vmap 4.21 s, lax.map 2.60 s, three separate calls 2.73 s). The default is lax.map on
the CPU backend and vmap elsewhere; runs spread over devices always vmap.

Shardings: the run axis composes with the `(data, fsdp)` mesh in one of two layouts.
- batch split (default): each run's batch is split over the devices as a single run's is, and the
  stacked state is replicated;
- runs spread: when a run's batch is too small to split over the devices but the run count
  divides them, whole runs go to devices (the run axis is sharded, batches are not split).
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from infoprompt_jax.model import models, objective
from infoprompt_jax.train import batching, sharding, steps

Arrays = dict[str, np.ndarray]


def stack(trees: Sequence[Any]) -> Any:
    """The trees' leaves stacked on a new leading axis (host numpy arrays)."""
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def unstack(tree: Any, index: int) -> Any:
    """Run `index` of a stacked tree."""
    return jax.tree.map(lambda x: x[index], tree)


def _leaves_by_path(tree: Any) -> dict[str, Any]:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree.leaves_with_path(tree)}


def restrict(tree: Any, target: Any) -> Any:
    """The leaves of `tree` at the paths of `target`, in `target`'s structure.

    A run stacked with rows that use a critic it does not carries that critic's params (and their
    optimizer moments); restricted to its own model's state, it saves exactly the tree its
    separate run saves.
    """
    leaves = _leaves_by_path(tree)
    missing = [path for path in _leaves_by_path(target) if path not in leaves]
    if missing:
        raise ValueError(f"The stacked state has no leaves at {missing[:5]}.")
    return jax.tree.map_with_path(lambda path, _: leaves[jax.tree_util.keystr(path)], target)


def embed(tree: Any, into: Any) -> Any:
    """`into` with its leaves replaced by `tree`'s where `tree` has a leaf at the same path.

    The inverse of `restrict` on the shared paths: a run's own restored state placed in the
    stacked (union) state, whose extra leaves keep their initial values.
    """
    leaves = _leaves_by_path(tree)
    return jax.tree.map_with_path(
        lambda path, leaf: leaves.get(jax.tree_util.keystr(path), leaf), into
    )


def spreads_runs(batch_size: int, num_runs: int, mesh: Mesh) -> bool:
    """Whether runs go whole to devices: a run's batch does not split over them, the runs do.

    Raises:
        ValueError: neither the batch nor the run count divides over the devices.
    """
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % devices == 0:
        return False
    if num_runs % devices == 0:
        return True
    raise ValueError(
        f"Neither the batch size {batch_size} nor the {num_runs} stacked runs divide over "
        f"{devices} devices (mesh {dict(mesh.shape)}); use a batch size or a run count that is "
        f"a multiple of {devices}."
    )


def run_axis_sharding(mesh: Mesh, spread: bool) -> NamedSharding:
    """Sharding of a stacked state leaf: run axis over the devices when spread, else replicated."""
    return NamedSharding(mesh, PartitionSpec(sharding.DATA_AXES if spread else None))


def stacked_batch_sharding(mesh: Mesh, spread: bool) -> NamedSharding:
    """Sharding of a `[R, B, ...]` batch: the run axis when spread, else each run's batch axis."""
    spec = PartitionSpec(sharding.DATA_AXES) if spread else PartitionSpec(None, sharding.DATA_AXES)
    return NamedSharding(mesh, spec)


def stacked_device_batch(
    runs_rows: Sequence[Arrays], mesh: Mesh, spread: bool, lengths: Sequence[int] = ()
) -> dict[str, jax.Array]:
    """The runs' batches `[B, ...]` as one `[R, B, ...]` batch on the mesh.

    With bucket `lengths`, every run's batch is cut to the one length that holds all their rows
    (only padding is cut, so a run's numbers are those of its own, shorter, cut up to rounding).
    Each process contributes its share of the sharded axis, as `batching.device_batch` does.
    """
    if len(lengths):
        length = max(batching.batch_length(rows, lengths) for rows in runs_rows)
        runs_rows = [batching.cut(rows, length) for rows in runs_rows]
    stacked = {name: np.stack([rows[name] for rows in runs_rows]) for name in runs_rows[0]}
    axis = 0 if spread else 1
    size = next(iter(stacked.values())).shape[axis]
    per_process = size // jax.process_count()
    local = [slice(None)] * 2
    local[axis] = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    batch_sharding = stacked_batch_sharding(mesh, spread)
    return {
        name: jax.make_array_from_process_local_data(batch_sharding, value[tuple(local)])
        for name, value in stacked.items()
    }


def stacked_train_step(
    states: steps.TrainState,
    frozen: Any,
    batches: steps.Batch,
    betas_R: jax.Array,
    gammas_R: jax.Array,
    *,
    model: models.InfoPromptModel,
    optimizer: optax.GradientTransformation,
    weights: objective.ObjectiveWeights,
    per_run_weights: bool,
    vectorize: bool = True,
) -> tuple[steps.TrainState, dict[str, jax.Array]]:
    """`steps.train_step` of every run at once; metrics gain the run axis `[R]`.

    Args:
        states: the runs' stacked train states.
        frozen: the one frozen tree, shared by every run.
        batches: `[R, B, ...]`.
        betas_R, gammas_R: per-run loss weights, read only when `per_run_weights` (rows that
            differ in beta and gamma); otherwise `weights` is static, as in a single run.
            `model` then has every critic some run uses; a run whose weight is 0 computes that
            critic's term but neither feels it (`objective.infoprompt_objective`) nor logs it.
    """

    def one_run(state, batch, beta, gamma):
        if not per_run_weights:
            return steps.train_step(
                state, frozen, batch, model=model, optimizer=optimizer, loss_weights=weights
            )
        run_weights = dataclasses.replace(weights, beta=beta, gamma=gamma)
        state, metrics = steps.train_step(
            state, frozen, batch, model=model, optimizer=optimizer, loss_weights=run_weights
        )
        # Its separate run has no such critic and logs the term as 0.
        metrics["nce_rep"] = jnp.where(beta > 0, metrics["nce_rep"], 0.0)
        metrics["nce_head"] = jnp.where(gamma > 0, metrics["nce_head"], 0.0)
        return state, metrics

    return over_runs(one_run, vectorize, states, batches, betas_R, gammas_R)


def over_runs(fn: Callable, vectorize: bool, *runs_args: Any) -> Any:
    """`fn` of every run's slice of `runs_args` (leading run axis), stacked: by `jax.vmap` when
    `vectorize`, else by `jax.lax.map` (one run after another, inside the program).

    A stack of one runs `fn` itself, the run axis dropped and added back: a separate run's
    program is the plain step's, so its numbers are those of the step it always had."""
    if jax.tree.leaves(runs_args)[0].shape[0] == 1:
        outputs = fn(*jax.tree.map(lambda x: x[0], runs_args))
        return jax.tree.map(lambda x: x[None], outputs)
    if vectorize:
        return jax.vmap(fn)(*runs_args)
    return jax.lax.map(lambda run_args: fn(*run_args), runs_args)


def default_vectorize(spread: bool) -> bool:
    """vmap on accelerators and for runs spread over devices; lax.map on a CPU (module doc)."""
    return spread or jax.default_backend() != "cpu"


def stacked_eval_step(
    trainables: Any,
    frozen: Any,
    batch: steps.Batch,
    *,
    model: models.InfoPromptModel,
    vectorize: bool = True,
) -> jax.Array:
    """Logits `[B, R, C]` of every run on one shared batch (rows first, for map_in_batches)."""
    logits_RxBxC = over_runs(
        lambda trainable: steps.eval_step(trainable, frozen, batch, model=model),
        vectorize,
        trainables,
    )
    return jnp.swapaxes(logits_RxBxC, 0, 1)


def compile_stacked_steps(
    model: models.InfoPromptModel,
    optimizer: optax.GradientTransformation,
    weights: objective.ObjectiveWeights,
    mesh: Mesh,
    states: steps.TrainState,
    frozen: Any,
    *,
    spread: bool,
    per_run_weights: bool = False,
    vectorize: bool | None = None,
) -> tuple[Callable, Callable]:
    """Jitted `train(states, frozen, batches, betas_R, gammas_R)` and `eval(trainables, frozen,
    batch)`, the stacked states donated; one compile per batch shape, shared by all the runs.

    `vectorize`: vmap (True) or lax.map (False) over the runs; None: `default_vectorize`.
    """
    if vectorize is None:
        vectorize = default_vectorize(spread)
    state_sh = jax.tree.map(lambda _: run_axis_sharding(mesh, spread), states)
    frozen_sh = sharding.param_shardings(mesh, frozen)
    replicated = sharding.replicated(mesh)
    train = jax.jit(
        functools.partial(
            stacked_train_step,
            model=model,
            optimizer=optimizer,
            weights=weights,
            per_run_weights=per_run_weights,
            vectorize=vectorize,
        ),
        in_shardings=(
            state_sh,
            frozen_sh,
            stacked_batch_sharding(mesh, spread),
            replicated,
            replicated,
        ),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )
    evaluate = jax.jit(
        functools.partial(stacked_eval_step, model=model, vectorize=vectorize),
        in_shardings=(state_sh.trainable, frozen_sh, sharding.batch_sharding(mesh)),
        out_shardings=replicated,
    )
    return train, evaluate


def place_states(states: steps.TrainState, mesh: Mesh, spread: bool) -> steps.TrainState:
    """Stacked host states on the mesh, in the layout `compile_stacked_steps` expects."""
    return jax.device_put(states, run_axis_sharding(mesh, spread))
