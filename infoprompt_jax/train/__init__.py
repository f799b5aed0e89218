"""Training: a run's pieces, the compiled steps, and the loop that drives them.

- `components`: a run's task, tokenizer, encoder weights, model and method, from its config.
- `sharding`, `batching`: the device mesh, global batches and length buckets.
- `optimizer`, `steps`, `run_state`: AdamW, the pure train/eval steps and the state they carry.
- `stacking`: the steps mapped over a leading axis of runs (seeds, loss-weight rows).
- `unprompted_cache`: the frozen encoder's unprompted pass, computed once per example.
- `evaluation`: the dev set placed on the devices once, and its metrics per evaluation.
- `loop`, `stacked_train`: the training loops; `phase_timer`, `progress`, `device_memory`,
  `prompt_trajectory`: what they measure and record on the way.
"""
