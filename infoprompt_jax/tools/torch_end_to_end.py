"""A whole run in PyTorch eager, written as a PyTorch user writes it: the end-to-end baseline.

```bash
python -m infoprompt_jax.tools.torch_end_to_end --config=configs/sst2.py \
    --config.model.name=DIR --config.data.source=local --config.data.dir=GLUE/SST-2 \
    --config.data.few_shot=256 --config.train.num_epochs=10 --output=torch_run.json
```

trains the config's method with `torch_reference.TorchReferenceStep` (the Hugging Face encoder,
the generator, the head and both InfoNCE critics, AdamW with the run's warmup and decay) and
evaluates the whole dev set after every epoch, the way a PyTorch training script does it:

- dynamic padding: every batch, train or dev, is cut to its own longest row (no buckets);
- dev batches in the dev set's order, under `torch.no_grad()`;
- no caching: every step and every evaluation runs the unprompted pass, then the prompted one.

Same data as the JAX run: the same few-shot subset, tokenization and per-epoch order
(`batching.epoch_order` of the seed), and the same initial parameters. It writes a summary like
the JAX run's: per-epoch dev metrics and `seconds` per phase, with `jax_setup` apart (importing
JAX and drawing the initial parameters with it, which a PyTorch script would not do).
"""

import json
import time

import numpy as np
import torch
import transformers  # noqa: F401 (imported here so that `startup` holds its import)
from absl import app, flags
from ml_collections import config_flags

_TORCH_IMPORTED, _TORCH_IMPORTED_AT = time.perf_counter(), time.time()

from infoprompt_jax.data import metrics as metrics_lib  # noqa: E402
from infoprompt_jax.model import trainable as trainable_lib  # noqa: E402
from infoprompt_jax.tools import torch_reference  # noqa: E402
from infoprompt_jax.train import batching, phase_timer  # noqa: E402
from infoprompt_jax.train import components as components_lib  # noqa: E402

_JAX_IMPORTED = time.perf_counter()


def define_flags() -> dict:
    """The command line's flags, defined only when run as a program (others define `config`)."""
    return {
        "config": config_flags.DEFINE_config_file("config", None, "Run config (configs/*.py)."),
        "output": flags.DEFINE_string("output", None, "Where to write the summary JSON."),
        "threads": flags.DEFINE_integer(
            "threads", 0, "torch.set_num_threads (0: PyTorch's default)."
        ),
    }


def dynamic_batch(arrays, indices: np.ndarray) -> dict[str, torch.Tensor]:
    """`arrays[indices]` as tensors, cut to the batch's longest row (a collator's padding)."""
    rows = {name: value[indices] for name, value in arrays.items()}
    rows = batching.cut(rows, int(batching.row_lengths(rows).max()))
    return torch_reference.to_torch(rows)


def predict(reference: torch_reference.TorchReferenceStep, batch) -> torch.Tensor:
    """Class logits `[B, C]`: the unprompted pass, the prompts, the prompted pass, the head."""
    with torch.no_grad():
        generator_input_BxD, _ = reference.unprompted_pass(batch)
        rows_B = torch.arange(batch["input_ids"].shape[0])
        prompts_BxNxD = reference.prompts(generator_input_BxD, len(rows_B))
        embeds_BxLxD = reference.word_embeddings(batch["input_ids"]).index_put(
            (rows_B[:, None], batch["prompt_positions"]), prompts_BxNxD
        )
        h_BxLxD = reference.encode(
            batch["attention_mask"],
            inputs_embeds=embeds_BxLxD,
            token_type_ids=batch["token_type_ids"],
        )
        return reference.logits(h_BxLxD[rows_B, batch["mask_position"]])


def evaluate(reference, task, dev, batch_size: int) -> dict[str, float]:
    """Dev metrics, in the dev set's order, `batch_size` rows per batch."""
    count = len(dev["label"])
    logits = [
        predict(reference, dynamic_batch(dev, np.arange(start, min(start + batch_size, count))))
        for start in range(0, count, batch_size)
    ]
    predictions = torch.cat(logits).argmax(-1).numpy()
    scores = metrics_lib.compute_metrics(task, predictions, dev["label"])
    return {f"eval_{name}": value for name, value in scores.items()}


def linear_schedule(optimizer, config, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The JAX run's warmup then linear decay (`optimizer.learning_rate_schedule`), as factors."""
    warmup = max(1, int(round(config.optim.warmup_fraction * total_steps)))
    decay = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        return step / warmup if step < warmup else max(0.0, 1.0 - (step - warmup) / decay)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def run(config) -> dict:
    """Trains and evaluates `config` eagerly; returns the summary (metrics and `seconds`)."""
    timer = phase_timer.PhaseTimer()
    seconds = {
        "startup": _TORCH_IMPORTED_AT - phase_timer.process_start_time(),
        "jax_setup": _JAX_IMPORTED - _TORCH_IMPORTED,
    }
    with timer.phase("jax_setup"):  # The tokenizer, and the JAX model that draws the init.
        components = components_lib.build_components(config)
    config, task = components.config, components.task
    with timer.phase("data"):
        train = components.encode(components_lib.load_examples(config, task, "train"))
        dev = components.encode(components_lib.load_examples(config, task, "dev"))
    batch_size = config.train.batch_size
    steps_per_epoch = batching.steps_per_epoch(len(train["label"]), batch_size)
    total_steps = steps_per_epoch * config.train.num_epochs
    with timer.phase("jax_setup"):
        params = components.init_params({k: v[:batch_size] for k, v in train.items()})
        trainable = trainable_lib.split_params(params, components.method.name)[0]
    with timer.phase("encoder_load"):
        reference = torch_reference.TorchReferenceStep.from_components(components, trainable)
        scheduler = linear_schedule(reference.optimizer, config, total_steps)
    history = []
    for epoch in range(config.train.num_epochs):
        with timer.phase("train"):
            order = batching.epoch_order(len(train["label"]), batch_size, config.seed, epoch)
            for indices in order:
                metrics = reference.step(dynamic_batch(train, indices))
                scheduler.step()
        with timer.phase("eval"):
            scores = evaluate(reference, task, dev, config.train.eval_batch_size)
        history.append({"epoch": epoch + 1, "train_loss": metrics["loss"], **scores})
        print(json.dumps(history[-1]), flush=True)
    for name, value in timer.as_dict().items():
        if value:
            seconds[name] = seconds.get(name, 0.0) + value
    seconds["total"] = time.time() - phase_timer.process_start_time()
    return {
        **history[-1],
        "history": history,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
    }


def main(argv, defined: dict):
    del argv
    if defined["threads"].value:
        torch.set_num_threads(defined["threads"].value)
    summary = run(defined["config"].value)
    text = json.dumps(summary, indent=2)
    if defined["output"].value:
        with open(defined["output"].value, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    _DEFINED = define_flags()
    flags.mark_flags_as_required(["config"])
    app.run(lambda argv: main(argv, _DEFINED))
