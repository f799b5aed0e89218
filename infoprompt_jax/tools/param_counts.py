"""Trainable and total parameters of every method, from shapes alone (no weights are read).

    python -m infoprompt_jax.tools.param_counts --shape=roberta-large --num_tokens=5
    python -m infoprompt_jax.tools.param_counts --model_dir=DIR --num_tokens=5

`--shape` takes a published RoBERTa shape (`random_encoder.SHAPES`, with an MLM head as those
checkpoints have); `--model_dir` reads a checkpoint's `config.json` only, so whether its head has
an MLM transform is `--mlm_head` (default: no, as for MiniLM's BertModel). Each method's model is traced with `jax.eval_shape`, split by its trainable
rules and counted (`trainable.trainable_param_counts`). Prints one markdown table: a row per
method, the trainable groups, trainable and total counts and the share.
"""

import json
import pathlib

import jax
import numpy as np
from absl import app, flags

from configs import default
from infoprompt_jax import cli
from infoprompt_jax.model import methods, models, pretrained
from infoprompt_jax.model import trainable as trainable_lib
from infoprompt_jax.tools import random_encoder

# (row, method, config overrides): the paper's rows that differ in what trains.
ROWS = (
    ("InfoPrompt", "infoprompt", {}),
    ("beta = gamma = 0", "infoprompt", {"loss.beta": 0.0, "loss.gamma": 0.0}),
    ("IDPG (S-IDPG-PHM)", "idpg", {}),
    ("M-IDPG-PHM", "idpg", {"model.idpg_layers": "all"}),
    ("WARP", "warp", {}),
    ("Adapter", "adapter", {}),
    ("Fine-tuning", "finetune", {}),
)


def _batch(num_prompt_tokens: int, length: int = 16) -> dict[str, np.ndarray]:
    """A one-row batch of the model's input contract (shapes are all that matter here)."""
    ids = np.zeros((1, length), np.int32)
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": ids,
        "prompt_positions": np.arange(1, 1 + num_prompt_tokens, dtype=np.int32)[None],
        "mask_position": np.asarray([length - 2], np.int32),
        "unprompted_input_ids": ids,
        "unprompted_attention_mask": np.ones_like(ids),
        "unprompted_token_type_ids": ids,
        "unprompted_mask_position": np.asarray([length - 2], np.int32),
        "unprompted_context_mask": np.ones_like(ids),
        "label": np.zeros((1,), np.int32),
    }


def method_counts(
    hf_config: dict,
    has_mlm_transform: bool,
    method: str,
    overrides: dict,
    num_tokens: int,
    num_classes: int = 2,
) -> dict[str, int]:
    """`trainable_param_counts` of one method on an encoder of `hf_config`'s shape."""
    config = default.get_config()
    config.method = method
    config.prompt.num_tokens = num_tokens
    for dotted, value in overrides.items():
        section, field = dotted.split(".")
        config[section][field] = value
    method_spec = methods.resolve(config, num_classes, has_mlm_transform)
    encoder_config = pretrained.encoder_config(hf_config, adapter_size=method_spec.adapter_size)
    model = models.InfoPromptModel(method_spec.model, encoder_config)
    batch = _batch(method_spec.model.num_prompt_tokens)
    params = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), batch, jax.random.PRNGKey(1))["params"]
    )
    return trainable_lib.trainable_param_counts(*trainable_lib.split_params(params, method))


def markdown_table(
    hf_config: dict, has_mlm_transform: bool, num_tokens: int, num_classes: int = 2
) -> str:
    """Every row of `ROWS` as one markdown table."""
    groups = [name for name, _ in trainable_lib.PARAM_GROUPS]
    lines = [
        "| method | " + " | ".join(groups) + " | trainable | total | % |",
        "|---" * (len(groups) + 4) + "|",
    ]
    for row, method, overrides in ROWS:
        counts = method_counts(
            hf_config, has_mlm_transform, method, overrides, num_tokens, num_classes
        )
        share = 100.0 * counts["trainable"] / counts["total"]
        cells = [f"{counts[name]:,}" for name in groups + ["trainable", "total"]]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {share:.3f} |")
    return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""
    flags.DEFINE_string(
        "shape", "", "A published shape: roberta-base | roberta-large.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "model_dir", "", "A checkpoint directory with config.json.", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "mlm_head", None, "Whether the head has an MLM transform.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "num_tokens", 4, "n_p (config.prompt.num_tokens).", flag_values=flag_values
    )
    flags.DEFINE_integer("num_classes", 2, "C, the task's labels.", flag_values=flag_values)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    shape, model_dir, mlm_head = flag_values.shape, flag_values.model_dir, flag_values.mlm_head
    if bool(shape) == bool(model_dir):
        raise app.UsageError("Give exactly one of --shape and --model_dir.")
    if shape:
        if shape not in random_encoder.SHAPES:
            raise app.UsageError(f"--shape={shape!r}; known: {sorted(random_encoder.SHAPES)}.")
        hf = {
            "model_type": "roberta",
            **random_encoder.ROBERTA_COMMON,
            **random_encoder.SHAPES[shape],
        }
        mlm = True if mlm_head is None else mlm_head
    else:
        hf = json.loads((pathlib.Path(model_dir) / "config.json").read_text())
        mlm = bool(mlm_head)
    print(markdown_table(hf, mlm, flag_values.num_tokens, flag_values.num_classes))


if __name__ == "__main__":
    cli.run_command(define_flags, main)
