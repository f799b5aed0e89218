"""InfoPrompt on MRPC (GLUE); the paper's defaults from configs/default.py."""

from configs import default


def get_config(variant: str = ""):
    """MRPC config; `variant` as in configs/default.py (e.g. "tiny")."""
    config = default.get_config()
    config.task = "mrpc"
    if variant:
        default.apply_variant(config, variant)
    return config
