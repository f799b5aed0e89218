"""When the loop logs, evaluates and saves: one question per step, asked in one place.

As big_vision's `itstime`: the loop asks `due(done)` after each step and acts on what is due,
so the cadence of every event is read here and nowhere else.
"""

import dataclasses

import ml_collections

LOG, EVAL, SAVE = "log", "eval", "save"


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The cadence of a run's events, from its `train` config and its length in steps."""

    train_config: ml_collections.ConfigDict
    steps_per_epoch: int
    total_steps: int

    def is_eval_step(self, done: int) -> bool:
        """Every `eval_every_steps` steps when set (a few-shot run's learning curve), else at
        every `eval_every_epochs`-th epoch end; always after the last step."""
        if done == self.total_steps:
            return True
        if self.train_config.eval_every_steps:
            return done % self.train_config.eval_every_steps == 0
        return done % (self.steps_per_epoch * self.train_config.eval_every_epochs) == 0

    def is_save_step(self, done: int, preempted: bool) -> bool:
        """Every `checkpoint_every_steps` steps (0: each epoch end), after the last step, and
        at once when the process is asked to stop."""
        every = self.train_config.checkpoint_every_steps
        periodic = done % (every or self.steps_per_epoch) == 0
        return periodic or done == self.total_steps or preempted

    def due(self, done: int, preempted: bool = False) -> tuple[str, ...]:
        """The events due after `done` steps, in the order the loop runs them."""
        events = []
        if done % self.train_config.log_every_steps == 0 or done == self.total_steps:
            events.append(LOG)
        if self.is_eval_step(done):
            events.append(EVAL)
        if self.is_save_step(done, preempted):
            events.append(SAVE)
        return tuple(events)


def is_eval_step(train_config, done: int, steps_per_epoch: int, total_steps: int) -> bool:
    """`Schedule.is_eval_step` for a config and a run length."""
    return Schedule(train_config, steps_per_epoch, total_steps).is_eval_step(done)
