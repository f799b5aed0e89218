"""InfoPrompt on ACE2005 entity typing (span given) from a JSONL export; the mask sits right before the entity span; micro-F1."""

from configs import default


def get_config(variant: str = ""):
    """The ace_ner config; `variant` as in configs/default.py (e.g. "tiny")."""
    config = default.get_config()
    config.task = "ace_ner"
    # Read from local files: ACE is licensed (users export it); SemEval from its release files.
    config.data.source = "local"
    if variant:
        default.apply_variant(config, variant)
    return config
