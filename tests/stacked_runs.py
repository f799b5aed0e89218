"""Helpers of the stacking tests: the tiny stacked run's config and metric comparisons."""

import dataclasses
import json
import pathlib

import sentiment_fixture

# Measured on this CPU: stacked vs separate eval accuracy differs by 0 and the train loss by
# < 1e-6 relative (the vmapped matmuls round differently); see docs/stacking.md.
LOSS_RTOL = 1e-4


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_config(model_dir, data_dir, seed, beta=None, gamma=None, **train_overrides):
    """The tiny SST-2 config of the stacking tests: 24 examples, 3 epochs of 3 steps."""
    config = sentiment_fixture.tiny_config(model_dir)
    config.data.dir = str(data_dir)
    config.data.few_shot = 24
    config.seed = seed
    config.train.num_epochs = 3
    config.train.log_every_steps = 1
    config.train.checkpoint_every_steps = 3
    if beta is not None:
        config.loss.beta, config.loss.gamma = beta, gamma
    for key, value in train_overrides.items():
        config.train[key] = value
    return config


def components_for_seed(components, seed: int):
    """`components` for another seed: the same encoder and model, the config's seed changed."""
    config = components.config.copy_and_resolve_references()
    config.seed = seed
    return dataclasses.replace(components, config=config)


def compare_metrics(separate: list[dict], stacked: list[dict]) -> tuple[float, float]:
    """Largest relative train-loss and absolute eval-accuracy differences, record by record."""
    assert [r["step"] for r in separate] == [r["step"] for r in stacked]
    loss_diff = acc_diff = 0.0
    for a, b in zip(separate, stacked):
        assert set(a) == set(b)
        if "train_loss" in a:
            loss_diff = max(
                loss_diff, abs(a["train_loss"] - b["train_loss"]) / abs(a["train_loss"])
            )
        if "eval_accuracy" in a:
            acc_diff = max(acc_diff, abs(a["eval_accuracy"] - b["eval_accuracy"]))
    return loss_diff, acc_diff


# A grid file of one SST-2 cell setting on the tiny checkpoint; rows and data filled in.
TINY_GRID = """
def get_grid():
  return {{
      "tasks": {{"sst2": {{"config": "configs/sst2.py", "overrides": {{
          "data.source": "local", "data.dir": "{data}", "model.name": "{model}"}}}}}},
      "rows": {rows},
      "num_tokens": [2],
      "few_shot": [16],
      "seeds": [0, 1],
      "overrides": {{"max_len": 32, "length_buckets": (16,), "train.num_epochs": 1,
                    "train.batch_size": 8, "model.adapter_size": 4,
                    "data.max_eval_examples": 16}},
  }}
"""
