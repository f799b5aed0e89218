"""The prompt trajectory: a run's prompt of one fixed example every k steps, for the landscape.

Training records it (`config.log_prompt_every`) and `analysis/landscape.py` draws the path it
took over the loss surface.
"""

import functools

import jax
import numpy as np
from etils import epath

from infoprompt_jax.train import steps


class PromptTrajectory:
    """The prompt of one fixed training example every k steps: `WORKDIR/prompt_trajectory.npz`
    with `steps [T]` and `prompts [T, n_p, D]`, for the loss-landscape figure."""

    def __init__(self, workdir: epath.Path, every: int, model, batch: dict[str, jax.Array]):
        self.path, self.every, self.batch = workdir / "prompt_trajectory.npz", every, batch
        self._prompts_fn = jax.jit(functools.partial(steps.prompt_step, model=model))
        self.steps, self.prompts = [], []
        if self.path.exists():
            with self.path.open("rb") as f:
                saved = np.load(f)
                self.steps, self.prompts = list(saved["steps"]), list(saved["prompts"])

    def maybe_record(self, step: int, trainable, frozen) -> None:
        """Records the prompt at `step` if it is a multiple of k (step 0 included)."""
        if not self.every or step % self.every or jax.process_index() != 0:
            return
        keep = [i for i, s in enumerate(self.steps) if s < step]  # A resumed run redraws the rest.
        self.steps = [self.steps[i] for i in keep] + [step]
        self.prompts = [self.prompts[i] for i in keep] + [
            np.asarray(self._prompts_fn(trainable, frozen, self.batch))[0]
        ]
        with self.path.open("wb") as f:
            np.savez(f, steps=np.asarray(self.steps), prompts=np.stack(self.prompts))
