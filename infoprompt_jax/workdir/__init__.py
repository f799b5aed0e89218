"""What a run leaves in its workdir, and the only code that reads and writes it.

- `checkpointing`: Orbax checkpoints of the train state; SIGTERM handling.
- `run_dir`: one workdir is one run (saved config, finished runs, the lock).
- `workdir_files`: `config.json` and `metrics.jsonl`; `metric_logging`: the metric writers.
"""
