"""InfoPrompt on SemEval-2010 Task 8 relation classification (official macro-F1); reads TRAIN_FILE.TXT and TEST_FILE_FULL.TXT from config.data.dir."""

from configs import default


def get_config(variant: str = ""):
    """The semeval config; `variant` as in configs/default.py (e.g. "tiny")."""
    config = default.get_config()
    config.task = "semeval"
    # Read from local files: ACE is licensed (users export it); SemEval from its release files.
    config.data.source = "local"
    if variant:
        default.apply_variant(config, variant)
    return config
