"""`--show_config`: a resolved config as `config.field = value` lines, in the order and under the
comments of the file that defines the fields (`configs/default.py`)."""

import pathlib
import re

import ml_collections

from infoprompt_jax import config_loading

_ASSIGNMENT = re.compile(r"\s*config\.([\w.]+)\s*=")


def field_comments(default_config_file: str | pathlib.Path) -> dict[str, list[str]]:
    """Each field `config.a.b = ...` assigns in a config file, in file order, with the comment
    lines written right above its first assignment (empty when there are none)."""
    comments, pending = {}, []
    for line in pathlib.Path(default_config_file).read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped)
            continue
        match = _ASSIGNMENT.match(line)
        if match:
            comments.setdefault(match.group(1), pending)
        pending = []
    return comments


def listing(config: ml_collections.ConfigDict, comments: dict[str, list[str]] | None = None) -> str:
    """Every field of `config` as `config.path = repr(value)` under its comment lines.

    Fields come in the order of `comments` (the defining file's), then the others by name; a
    blank line opens each section.
    """
    comments = comments or {}
    order = {path: index for index, path in enumerate(comments)}
    fields = config_loading.flatten(config)
    lines, section = [], None
    for path in sorted(fields, key=lambda p: (order.get(p, len(order)), p)):
        if "." in path and path.split(".")[0] != section:
            section = path.split(".")[0]
            lines.append("")
        lines.extend(comments.get(path, []))
        lines.append(f"config.{path} = {fields[path]!r}")
    return "\n".join(lines) + "\n"
