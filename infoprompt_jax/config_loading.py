"""The run config's one list of dotted fields: `flatten` (`--show_config`, the resume check)."""

from collections.abc import Mapping
from typing import Any

import ml_collections


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a.b": value}` for every leaf of a nested config: a ConfigDict or the dicts of its JSON.

    Args:
      tree: the config, or a subtree of it.
      prefix: put before every key (the subtree's own dotted path and a dot).
    """
    flat = {}
    for key, value in tree.items():
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
