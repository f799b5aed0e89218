"""Which Flax encoder module serves which encoder config, and its default position ids.

`encoder.py` holds RoBERTa and BERT; the other families (MPNet, DeBERTa-v3, ModernBERT) live in their own modules, each with a
frozen config dataclass, a module taking `encoder.Encoder`'s arguments and a
`config_from_hf(config_json, **overrides)`. This module is the one place that maps between them.
"""

from typing import Any

import jax

from infoprompt_jax.model import deberta, modernbert, mpnet
from infoprompt_jax.model import encoder as encoder_lib

# Hugging Face model_type -> the module that builds its config and encoder.
MODULES_BY_MODEL_TYPE = {"deberta-v2": deberta, "modernbert": modernbert, "mpnet": mpnet}
_ENCODERS = {
    mpnet.MPNetConfig: mpnet.MPNetEncoder,
    deberta.DebertaConfig: deberta.DebertaEncoder,
    modernbert.ModernBertConfig: modernbert.ModernBertEncoder,
}
_POSITION_IDS = {
    deberta.DebertaConfig: deberta.position_ids_from_mask,
    modernbert.ModernBertConfig: modernbert.position_ids_from_mask,
}


# Checkpoint tensors a family's model never reads: some DeBERTa checkpoints keep absolute
# position embeddings that position_biased_input=false leaves unused (Hugging Face ignores them).
_UNUSED_CHECKPOINT_PREFIXES = {deberta.DebertaConfig: ("embeddings.position_embeddings.",)}


def unused_checkpoint_prefixes(config) -> tuple[str, ...]:
    """Prefixes of checkpoint names (model prefix stripped) that `config`'s family does not use."""
    return _UNUSED_CHECKPOINT_PREFIXES.get(type(config), ())


def build_encoder(config, dtype) -> Any:
    """The Flax encoder module of `config`'s family, computing in `dtype`."""
    return _ENCODERS.get(type(config), encoder_lib.Encoder)(config, dtype=dtype)


def position_ids_from_mask(config, attention_mask: jax.Array) -> jax.Array:
    """The position ids `config`'s family expects for a (possibly padded) batch, `[B, L]`."""
    family_position_ids = _POSITION_IDS.get(type(config))
    if family_position_ids is None:
        return encoder_lib.position_ids_from_mask(config, attention_mask)
    return family_position_ids(attention_mask)
