"""Training: a run's pieces, the compiled steps, and the one loop that drives them.

- `components`: a run's task, tokenizer, encoder weights, model and method, from its config.
- `sharding`, `batching`: the device mesh, global batches and length buckets.
- `optimizer`, `steps`, `run_state`: AdamW, the pure train/eval steps and the state they carry.
- `stacking`: the steps mapped over a leading axis of runs (seeds, loss-weight rows).
- `unprompted_cache`: the frozen encoder's unprompted pass, computed once per example.
- `evaluation`: the dev set placed on the devices once, and its metrics per evaluation.
- `stack_rules`: which runs may train together; `stack_setup`: a stack built, resumed, compiled.
- `loop`: the training loop (a separate run is a stack of one); `schedule`: when it logs,
  evaluates and saves; `run_slots`: each run's workdir, resume, checkpoints and summary.
- `phase_timer`, `progress`, `prompt_trajectory`: what a run measures and records on the way.

The entry points are `loop.train_and_evaluate` and `loop.train_and_evaluate_stacked`. This file
imports nothing, so that the grid runner reads `stack_rules` without loading JAX and the model.
"""
