"""Run configs as every command reads them: checked before any work, older ones upgraded.

`load` is the one way in. `main` passes it the config of its flags, before it creates a workdir
or loads an encoder; the resume check (`run_dir.check_same_run`) and every reader of a saved
config (export, predict, the analyses, through `workdir_files.load_config`) pass it the saved
`config.json`. A field that a later version added and that an older workdir's config lacks reads
as the value that reproduces the older version's behaviour (`ABSENT_READS_AS`), so a run written
before an upgrade still resumes, exports and analyses. `flatten` is the config's one list of
dotted fields.
"""

import copy
import json
from collections.abc import Mapping
from typing import Any

import ml_collections
from etils import epath

from infoprompt_jax import config_validation

# Fields added after the first release, and the value that does what a version without the
# field did: a saved config without the field reads as this value.
ABSENT_READS_AS = {
    # Before length buckets every batch kept max_len tokens (today's default cuts padding).
    "length_buckets": (),
    # The two-matmul attention was the only kernel.
    "model.attention": "einsum",
    # The paper's negatives, samples around the unprompted Z0, were the only ones.
    "loss.representation_negatives": "unprompted",
    # Evaluations came every `eval_every_epochs` only.
    "train.eval_every_steps": 0,
    # Hugging Face datasets were read by the task's own hub id only.
    "data.hf_path": "",
    # IDPG's generator fields: no other method reads them. (An earlier `method=idpg` was
    # InfoPrompt's generator without its loss terms; its checkpoints hold another state layout
    # and are refused as such: rerun it as loss.beta=0 loss.gamma=0.)
    "model.idpg_hidden": 256,
    "model.idpg_phm_n": 16,
    "model.idpg_layers": "input",
}


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


def load(config: Mapping[str, Any] | ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config a run or a reader works with: complete and checked.

    Args:
      config: a config from flags or a config file, or a saved `config.json`'s contents.

    Returns:
      A new ConfigDict: the fields of `ABSENT_READS_AS` that `config` lacks added with their
      values, FieldReferences resolved.

    Raises:
      ValueError: a field is outside its range or not one of its choices
        (`config_validation.validate`); the message names it and the fix.
    """
    if isinstance(config, ml_collections.ConfigDict):
        raw = config.copy_and_resolve_references().to_dict()
    else:
        raw = copy.deepcopy(dict(config))
    for dotted, value in ABSENT_READS_AS.items():
        *sections, name = dotted.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node.setdefault(name, value)
    loaded = ml_collections.ConfigDict(raw)
    config_validation.validate(loaded)
    return loaded


def load_file(path: str | epath.Path) -> ml_collections.ConfigDict:
    """`load` of a saved `config.json` (a workdir's or an export's)."""
    path = epath.Path(path)
    try:
        return load(json.loads(path.read_text()))
    except ValueError as e:
        if isinstance(e, json.JSONDecodeError):
            raise ValueError(f"{path} is not JSON ({e}); restore it from a copy.") from None
        raise ValueError(f"{path}: {e}") from None
