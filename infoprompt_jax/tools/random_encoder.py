"""Writes a randomly initialised Hugging Face encoder checkpoint of a published shape.

For benchmarks where the real weights cannot be downloaded (speed and memory depend on the shape
only):

    python -m infoprompt_jax.tools.random_encoder --shape=roberta-large --output=/tmp/roberta_large_random
    python -m infoprompt_jax.tools.bench --config=configs/sst2.py \
        --config.model.name=/tmp/roberta_large_random --batch_size=32 --seq_len=128

The checkpoint is the family's masked-LM model (`RobertaForMaskedLM`, `DebertaV2ForMaskedLM`,
`ModernBertForMaskedLM`, so the head keeps its MLM transform as the published ones do) saved as
`model.safetensors`, with the RoBERTa tokenizer of `--tokenizer_dir` (default: the real one in
`../shared/data/roberta_tokenizer`). DeBERTa-v3 and ModernBERT have tokenizers of their own, but
their vocabularies are larger than RoBERTa's 50265, so its ids are valid ones and the step's
speed, which depends on the shape only, is theirs. Needs torch and transformers
(`pip install -e ".[test]"`).
"""

import pathlib
import shutil

from absl import app, flags

from infoprompt_jax import cli

# The published configs' shapes (config.json of the Hugging Face hub repositories).
SHAPES = {
    "roberta-base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
    "roberta-large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
    "deberta-v3-large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
    "modernbert-large": dict(
        hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, intermediate_size=2624
    ),
}
ROBERTA_COMMON = dict(
    vocab_size=50265,
    max_position_embeddings=514,
    type_vocab_size=1,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    layer_norm_eps=1e-5,
)
# microsoft/deberta-v3-large's config.json, its pad id moved to RoBERTa's tokenizer's.
DEBERTA_V3_COMMON = dict(
    vocab_size=128100,
    max_position_embeddings=512,
    type_vocab_size=0,
    pad_token_id=1,
    layer_norm_eps=1e-7,
    relative_attention=True,
    position_buckets=256,
    max_relative_positions=-1,
    pos_att_type=["p2c", "c2p"],
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    position_biased_input=False,
)
# answerdotai/ModernBERT-large's config.json, its special ids moved to RoBERTa's tokenizer's.
MODERNBERT_COMMON = dict(
    vocab_size=50368,
    max_position_embeddings=8192,
    global_attn_every_n_layers=3,
    local_attention=128,
    global_rope_theta=160000.0,
    local_rope_theta=10000.0,
    norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    cls_token_id=0,
    eos_token_id=2,
    sep_token_id=2,
)
DEFAULT_TOKENIZER = pathlib.Path(__file__).resolve().parents[2] / "shared/data/roberta_tokenizer"


def write_checkpoint(
    shape: str, output: pathlib.Path, tokenizer_dir: pathlib.Path, seed: int = 0
) -> None:
    """Saves a random `shape` masked-LM model and its tokenizer files to `output`."""
    import torch
    import transformers

    if shape not in SHAPES:
        raise ValueError(f"--shape={shape!r}; known shapes: {sorted(SHAPES)}.")
    if not (tokenizer_dir / "vocab.json").is_file():
        raise FileNotFoundError(
            f"{tokenizer_dir} has no vocab.json: pass --tokenizer_dir=DIR "
            "with a RoBERTa tokenizer (vocab.json, merges.txt)."
        )
    torch.manual_seed(seed)
    model = _random_model(shape).eval()
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    if shape.startswith("roberta"):
        for name in ("vocab.json", "merges.txt", "tokenizer.json"):
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, output / name)
    else:  # tokenizer_config.json then names the RoBERTa tokenizer, not the family's own.
        transformers.RobertaTokenizerFast.from_pretrained(str(tokenizer_dir)).save_pretrained(
            output
        )
    count = sum(p.numel() for p in model.base_model.parameters())
    print(f"Wrote a random {shape} ({count / 1e6:.1f}M encoder parameters) to {output}")


def _random_model(shape: str):
    """The randomly initialised masked-LM model of `shape`."""
    import transformers

    if shape.startswith("deberta"):
        config = transformers.DebertaV2Config(**DEBERTA_V3_COMMON, **SHAPES[shape])
        return transformers.DebertaV2ForMaskedLM(config)
    if shape.startswith("modernbert"):
        config = transformers.ModernBertConfig(**MODERNBERT_COMMON, **SHAPES[shape])
        return transformers.ModernBertForMaskedLM(config)
    return transformers.RobertaForMaskedLM(
        transformers.RobertaConfig(**ROBERTA_COMMON, **SHAPES[shape])
    )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""
    flags.DEFINE_enum(
        "shape", "roberta-large", sorted(SHAPES), "The published shape.", flag_values=flag_values
    )
    flags.DEFINE_string("output", None, "Directory to write.", flag_values=flag_values)
    flags.DEFINE_string(
        "tokenizer_dir",
        str(DEFAULT_TOKENIZER),
        "A RoBERTa tokenizer (vocab.json, merges.txt).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("seed", 0, "torch's seed for the weights.", flag_values=flag_values)
    flags.mark_flags_as_required(["output"], flag_values=flag_values)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    write_checkpoint(
        flag_values.shape,
        pathlib.Path(flag_values.output),
        pathlib.Path(flag_values.tokenizer_dir),
        flag_values.seed,
    )


if __name__ == "__main__":
    cli.run_command(define_flags, main)
