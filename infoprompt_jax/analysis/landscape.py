"""Loss landscape of a one-token prompt: the paper's Figure 2.

The prompt space is R^D; the figure looks at the plane through the mean of the pretrained
word embeddings spanned by their top-2 principal components. At each grid point (a, b) the
prompt `mean + a * pc1 + b * pc2` replaces the run's prompt for every example (a generator's
output is overridden), and two losses are averaged over a fixed sample of training examples:

- the task loss, the cross entropy of the (deterministic) head;
- the representation loss NCE_rep, with one fixed sampling key shared by every grid point, so
  the surface shows how the loss moves with the prompt rather than with the sampling noise.

The training trajectory (`WORKDIR/prompt_trajectory.npz`, written when the run had
`config.log_prompt_every > 0`) and the learned prompt are projected onto the plane and drawn on
the contours. Points off the plane are drawn at their projection; the losses are those of the
plane.

    python -m infoprompt_jax.analysis.landscape --workdir=W --output=DIR \
        [--grid_size=21] [--radius=R] [--num_examples=20]

writes `DIR/task_loss.png`, `DIR/representation_loss.png` (runs with a representation critic)
and `DIR/landscape.npz`.
"""

import functools
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from infoprompt_jax import cli
from infoprompt_jax.analysis import plotting, prompt_eval, runs
from infoprompt_jax.model import models
from infoprompt_jax.workdir import workdir_files

LOSS_TITLES = {
    "task_loss": "task loss (cross entropy)",
    "representation_loss": "representation loss NCE_rep",
}


class Plane(NamedTuple):
    """The plane of the landscape.

    Attributes:
        mean_D: the word embeddings' mean, the plane's origin.
        pcs_2xD: the top-2 principal directions, orthonormal rows.
        stddevs_2: the embeddings' standard deviation along each direction.
    """

    mean_D: np.ndarray
    pcs_2xD: np.ndarray
    stddevs_2: np.ndarray


def principal_directions(table_VxD: np.ndarray, num_components: int = 2) -> Plane:
    """The top principal components of the rows of `table_VxD` (centred SVD).

    Each direction's sign is fixed so that its largest-magnitude entry is positive, so that the
    same table always gives the same plane.
    """
    table_VxD = np.asarray(table_VxD, np.float32)
    mean_D = table_VxD.mean(axis=0)
    _, singular_values, vt_DxD = np.linalg.svd(table_VxD - mean_D, full_matrices=False)
    pcs = vt_DxD[:num_components]
    signs = np.sign(pcs[np.arange(num_components), np.abs(pcs).argmax(axis=1)])
    stddevs = singular_values[:num_components] / np.sqrt(max(len(table_VxD) - 1, 1))
    return Plane(mean_D, (pcs * signs[:, None]).astype(np.float32), stddevs.astype(np.float32))


def project(vectors_TxD: np.ndarray, plane: Plane) -> np.ndarray:
    """Coordinates `[T, 2]` of vectors' projections onto the plane."""
    return (np.asarray(vectors_TxD, np.float32) - plane.mean_D) @ plane.pcs_2xD.T


def plane_points(points_Px2: np.ndarray, plane: Plane) -> np.ndarray:
    """The vectors `[P, D]` at plane coordinates: `mean + a * pc1 + b * pc2`."""
    return plane.mean_D + np.asarray(points_Px2, np.float32) @ plane.pcs_2xD


def grid_coordinates(grid_size: int, radius: float) -> np.ndarray:
    """`[grid_size]` coordinates from -radius to radius, the same along both axes."""
    if grid_size < 2:
        raise ValueError(f"grid_size={grid_size}: a grid needs at least 2 points a side.")
    return np.linspace(-radius, radius, grid_size, dtype=np.float32)


@functools.partial(jax.jit, static_argnums=(0,))
def _mean_losses(
    model: models.InfoPromptModel,
    params: Any,
    batch: dict[str, jax.Array],
    prompts_PxNxD: jax.Array,
    key: jax.Array,
) -> dict[str, jax.Array]:
    """Sample-mean losses `[P]` for P prompts, the examples batched inside each prompt."""

    def losses_at(prompt_NxD):
        terms = model.apply(
            {"params": params}, batch, key, prompt_NxD, method=prompt_eval.prompt_terms
        )
        out = {"task_loss": jnp.mean(terms["ce"])}
        if "nce_rep" in terms:
            out["representation_loss"] = jnp.mean(terms["nce_rep"])
        return out

    # vmap batches only what depends on the prompt: the unprompted pass (and the critic's
    # noise, drawn from the one key) is computed once per call, not once per prompt.
    return jax.vmap(losses_at)(prompts_PxNxD)


def evaluate_points(
    model: models.InfoPromptModel,
    params: Any,
    arrays: dict[str, np.ndarray],
    plane: Plane,
    points_Px2: np.ndarray,
    key: jax.Array,
    points_per_batch: int = 16,
) -> dict[str, np.ndarray]:
    """Losses at arbitrary plane coordinates, averaged over the examples of `arrays`.

    Args:
        model, params: the run's model and full parameters (one prompt token).
        arrays: the tokenized example sample with labels, evaluated as one batch.
        plane: the plane of the coordinates.
        points_Px2: plane coordinates (a, b).
        key: the sampling key of the representation loss, the same at every point.
        points_per_batch: prompts evaluated per compiled call (vmapped); bounds memory.

    Returns:
        `task_loss` `[P]`, and `representation_loss` `[P]` when the run has a critic.
    """
    points_Px2 = np.asarray(points_Px2, np.float32).reshape(-1, 2)
    count = len(points_Px2)
    # Pads the last chunk with copies of the last point so every call has one shape.
    padded = -(-count // points_per_batch) * points_per_batch
    rows = np.minimum(np.arange(padded), count - 1)
    prompts_PxNxD = plane_points(points_Px2[rows], plane)[:, None, :]
    batch = {name: jnp.asarray(value) for name, value in arrays.items()}
    chunks = []
    for start in range(0, padded, points_per_batch):
        chunk = prompts_PxNxD[start : start + points_per_batch]
        chunks.append(jax.device_get(_mean_losses(model, params, batch, chunk, key)))
    return {name: np.concatenate([c[name] for c in chunks])[:count] for name in chunks[0]}


def evaluate_grid(
    model: models.InfoPromptModel,
    params: Any,
    arrays: dict[str, np.ndarray],
    plane: Plane,
    coords_G: np.ndarray,
    key: jax.Array,
    points_per_batch: int = 16,
) -> dict[str, np.ndarray]:
    """Losses `[G, G]` over the grid; `loss[i, j]` is at (a, b) = (coords[j], coords[i])."""
    a_GxG, b_GxG = np.meshgrid(coords_G, coords_G)
    points = np.stack([a_GxG.ravel(), b_GxG.ravel()], axis=1)
    values = evaluate_points(model, params, arrays, plane, points, key, points_per_batch)
    return {name: value.reshape(a_GxG.shape) for name, value in values.items()}


def load_trajectory(workdir: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps [T], prompts [T, n_p, D]) from `WORKDIR/prompt_trajectory.npz`, or None."""
    path = pathlib.Path(workdir) / "prompt_trajectory.npz"
    if not path.exists():
        return None
    with np.load(path) as saved:
        return np.asarray(saved["steps"]), np.asarray(saved["prompts"], np.float32)


def default_radius(plane: Plane, marked_Mx2: np.ndarray) -> float:
    """Three standard deviations of the embeddings, widened to hold every marked point."""
    radius = 3.0 * float(plane.stddevs_2.max())
    if len(marked_Mx2):
        radius = max(radius, 1.25 * float(np.abs(marked_Mx2).max()))
    return radius


def require_one_prompt_token(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises unless the run tuned exactly one prompt token."""
    if config.method not in ("infoprompt", "idpg", "warp") or config.prompt.num_tokens != 1:
        raise ValueError(
            f"{workdir}: method={config.method}, prompt.num_tokens={config.prompt.num_tokens}; "
            "the landscape is drawn for prompt methods (infoprompt, idpg, warp) with one prompt "
            "token (--config.prompt.num_tokens=1)."
        )


def sample_examples(components, num_examples: int, seed: int) -> dict[str, np.ndarray]:
    """A fixed sample of `num_examples` training examples, tokenized."""
    arrays = runs.encode_examples(components, "train")
    count = len(arrays["label"])
    rows = np.sort(np.random.default_rng(seed).permutation(count)[: min(num_examples, count)])
    return {name: value[rows] for name, value in arrays.items()}


def plot(
    coords_G: np.ndarray,
    loss_GxG: np.ndarray,
    title: str,
    path: pathlib.Path,
    trajectory: tuple[np.ndarray, np.ndarray] | None = None,
    learned_2: np.ndarray | None = None,
) -> None:
    """Filled contours of one loss, with the projected trajectory and learned prompt on top.

    Args:
        trajectory: (steps [T], plane coordinates [T, 2]) or None.
    """
    plt = plotting.pyplot()
    figure, axes = plt.subplots(figsize=(6, 5))
    filled = axes.contourf(coords_G, coords_G, loss_GxG, levels=20, cmap="viridis")
    axes.contour(coords_G, coords_G, loss_GxG, levels=10, colors="white", linewidths=0.4, alpha=0.6)
    figure.colorbar(filled, ax=axes, label=title)
    if trajectory is not None and len(trajectory[0]):
        steps, points = trajectory
        axes.plot(
            points[:, 0],
            points[:, 1],
            "-o",
            color="red",
            markersize=2.5,
            linewidth=1,
            label=f"trajectory, steps {int(steps[0])}-{int(steps[-1])}",
        )
        axes.plot(*points[0], "s", color="red", markersize=6)
    if learned_2 is not None:
        axes.plot(
            *learned_2,
            "*",
            color="white",
            markeredgecolor="black",
            markersize=14,
            label="learned prompt",
        )
    axes.set_xlabel("PC1 of the word embeddings")
    axes.set_ylabel("PC2 of the word embeddings")
    axes.set_aspect("equal")
    axes.set_title(title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper right", fontsize=8)
    plotting.save(figure, path)


def compute(
    workdir: str,
    grid_size: int = 21,
    radius: float | None = None,
    num_examples: int = 20,
    seed: int = 0,
    sample_seed: int = 0,
    trajectory_steps: int = 0,
    points_per_batch: int = 16,
) -> dict[str, np.ndarray]:
    """The landscape of a run: what `landscape.npz` holds.

    Args:
        workdir: a run with one prompt token.
        grid_size: points per side of the grid.
        radius: half-width of the grid in plane coordinates; None: `default_radius`.
        num_examples: size of the fixed sample of training examples.
        seed: the representation loss's sampling key.
        sample_seed: seed of the example sample.
        trajectory_steps: draw the trajectory up to this step (0: all of it).
        points_per_batch: grid points per compiled call.
    """
    require_one_prompt_token(workdir_files.load_config(workdir), workdir)
    components, params = runs.restore_run(workdir)
    arrays = sample_examples(components, num_examples, sample_seed)
    plane = principal_directions(runs.word_embedding_table(params))
    own = prompt_eval.own_prompts_fn(components.model, params, arrays)
    # A generator prompts each example differently: mark the sample's mean prompt.
    learned_2 = project(np.asarray(own).mean(axis=0), plane)[0]
    result = {
        "pcs": plane.pcs_2xD,
        "mean": plane.mean_D,
        "stddevs": plane.stddevs_2,
        "learned": learned_2,
    }
    marked = [learned_2[None]]
    trajectory = load_trajectory(workdir)
    if trajectory is not None:
        steps, prompts = trajectory
        keep = steps <= trajectory_steps if trajectory_steps else np.ones(len(steps), bool)
        result["trajectory_steps"] = steps[keep]
        result["trajectory"] = project(prompts[keep, 0], plane)
        marked.append(result["trajectory"])
    else:
        logging.info(
            "No %s/prompt_trajectory.npz (train with --config.log_prompt_every=k to "
            "draw the trajectory).",
            workdir,
        )
    radius = radius or default_radius(plane, np.concatenate(marked))
    coords = grid_coordinates(grid_size, radius)
    losses = evaluate_grid(
        components.model, params, arrays, plane, coords, jax.random.PRNGKey(seed), points_per_batch
    )
    result.update(
        a=coords,
        b=coords,
        radius=np.float32(radius),
        num_examples=np.int32(len(arrays["label"])),
        **losses,
    )
    for name, loss in losses.items():
        result[f"{name}_roughness"] = np.float64(roughness(loss))
    return result


def roughness(loss_GxG: np.ndarray) -> float:
    """How rugged a surface is: mean |discrete Laplacian| over interior points, over its range.

    Dividing by the range (max - min) makes surfaces of different scales comparable on the same
    grid: a plane scores 0, a checkerboard that swings between its extremes from point to
    point scores 4, the most possible. The paper's claim that the representation loss is
    smoother than the task loss reads as a lower roughness.
    """
    loss_GxG = np.asarray(loss_GxG, np.float64)
    laplacian = (
        loss_GxG[2:, 1:-1]
        + loss_GxG[:-2, 1:-1]
        + loss_GxG[1:-1, 2:]
        + loss_GxG[1:-1, :-2]
        - 4 * loss_GxG[1:-1, 1:-1]
    )
    spread = loss_GxG.max() - loss_GxG.min()
    return float(np.abs(laplacian).mean() / spread) if spread > 0 else 0.0


def write(result: dict[str, np.ndarray], output: pathlib.Path) -> list[pathlib.Path]:
    """`landscape.npz` and one contour PNG per loss; returns the PNG paths."""
    output.mkdir(parents=True, exist_ok=True)
    np.savez(output / "landscape.npz", **result)
    trajectory = None
    if "trajectory" in result:
        trajectory = (result["trajectory_steps"], result["trajectory"])
    paths = []
    for name, title in LOSS_TITLES.items():
        if name in result:
            paths.append(output / f"{name}.png")
            plot(result["a"], result[name], title, paths[-1], trajectory, result["learned"])
    return paths


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""

    def define(kind, name, default, help_text):
        kind(name, default, help_text, flag_values=flag_values)

    define(flags.DEFINE_string, "workdir", None, "The run's workdir.")
    define(flags.DEFINE_string, "output", None, "Directory for the PNGs and the npz.")
    define(flags.DEFINE_integer, "grid_size", 21, "Grid points per side.")
    define(
        flags.DEFINE_float,
        "radius",
        None,
        "Half-width of the grid (default: 3 standard deviations of the embeddings, widened to "
        "hold the trajectory and learned prompt).",
    )
    define(
        flags.DEFINE_integer, "num_examples", 20, "Training examples the losses are averaged over."
    )
    define(
        flags.DEFINE_integer,
        "trajectory_steps",
        0,
        "Draw the trajectory up to this step (0: all of it).",
    )
    define(
        flags.DEFINE_integer,
        "points_per_batch",
        16,
        "Grid points per compiled call (lower it if memory runs out).",
    )
    define(flags.DEFINE_integer, "seed", 0, "Seed of the representation loss's sampling key.")
    define(flags.DEFINE_integer, "sample_seed", 0, "Seed of the example sample.")
    flags.mark_flags_as_required(["workdir", "output"], flag_values=flag_values)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, np.ndarray]:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    result = compute(
        flag_values.workdir,
        flag_values.grid_size,
        flag_values.radius,
        flag_values.num_examples,
        flag_values.seed,
        flag_values.sample_seed,
        flag_values.trajectory_steps,
        flag_values.points_per_batch,
    )
    output = pathlib.Path(flag_values.output)
    paths = write(result, output)
    print(
        f"Wrote {output / 'landscape.npz'} and {', '.join(str(p) for p in paths)} "
        f"(radius {float(result['radius']):.4g}, {int(result['num_examples'])} examples)."
    )
    for name in LOSS_TITLES:
        if name in result:
            loss = result[name]
            print(
                f"{name}: min {loss.min():.4f}, max {loss.max():.4f}, roughness "
                f"{float(result[name + '_roughness']):.4f} (mean |Laplacian| / range)"
            )
    return result


if __name__ == "__main__":
    cli.run_command(define_flags, main)
