"""InfoPrompt on ACE2005 relation extraction from a JSONL export (train.jsonl, dev.jsonl; see infoprompt_jax/data/sources.py); micro-F1."""

from configs import default


def get_config(variant: str = ""):
    """The ace_re config; `variant` as in configs/default.py (e.g. "tiny")."""
    config = default.get_config()
    config.task = "ace_re"
    # Read from local files: ACE is licensed (users export it); SemEval from its release files.
    config.data.source = "local"
    if variant:
        default.apply_variant(config, variant)
    return config
