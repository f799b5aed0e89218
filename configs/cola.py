"""InfoPrompt on COLA (GLUE); the paper's defaults from configs/default.py."""

from configs import default


def get_config(variant: str = ""):
    """COLA config; `variant` as in configs/default.py (e.g. "tiny")."""
    config = default.get_config()
    config.task = "cola"
    if variant:
        default.apply_variant(config, variant)
    return config
