"""Everything a run is built from, made from a config in one place.

Training, evaluation, export, prediction, the benchmark and the analysis tools all call
`build_components` so that they agree on the task, tokenizer, template, method and model.
"""

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from infoprompt_jax.data import sources as data_lib
from infoprompt_jax.data import tasks, templates
from infoprompt_jax.model import encoder as encoder_lib
from infoprompt_jax.model import idpg, methods, model_init, models, pretrained

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Components:
    """The pieces of a run.

    Attributes:
      config: the run config (after the released-variant knobs are applied).
      task: the task, with its label set.
      model_dir: local directory of the encoder checkpoint.
      tokenizer: the checkpoint's Hugging Face tokenizer.
      template_tokenizer: the task template bound to the tokenizer and lengths.
      method: model config, loss weights, learning rate.
      model: the Flax model.
      encoder_params: pretrained encoder params (adapters included for method=adapter).
      mlm_transform: the checkpoint's MLM transform params, or None.
      verbalizer_ids: per class, the verbalizer's token ids.
    """

    config: ml_collections.ConfigDict
    task: tasks.TaskSpec
    model_dir: pathlib.Path
    tokenizer: Any
    template_tokenizer: templates.TemplateTokenizer
    method: methods.Method
    model: models.InfoPromptModel
    encoder_params: dict[str, Any]
    mlm_transform: dict[str, Any] | None
    verbalizer_ids: list[list[int]]

    def encode(self, examples: Sequence[data_lib.Example]) -> dict[str, np.ndarray]:
        """Tokenized arrays of `examples`, with their labels."""
        arrays = self.template_tokenizer.encode_batch([ex.fields for ex in examples])
        arrays["label"] = np.asarray([ex.label for ex in examples], np.int32)
        return arrays

    def init_params(self, sample_batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """The full initial parameter tree (pretrained where possible) for `config.seed`."""
        return model_init.init_params(
            self.model,
            jax.random.PRNGKey(self.config.seed),
            sample_batch,
            self.encoder_params,
            mlm_transform=self.mlm_transform if self.method.model.has_mlm_transform else None,
            verbalizer_ids=self.verbalizer_ids,
            prompt_init=self.free_prompt_init(),
        )

    def free_prompt_init(self) -> np.ndarray | None:
        """WARP's initial prompt `[n_p, D]` from `config.prompt.init`; None for other methods."""
        if self.method.model.prompt_source != "free":
            return None
        table = np.asarray(model_init.word_embedding_table(self.encoder_params))
        n = self.method.model.num_prompt_tokens
        how = self.config.prompt.init
        if how == "random":
            return None
        if how == "mask":
            return np.repeat(table[self.tokenizer.mask_token_id][None], n, axis=0)
        if how == "vocab":
            rows = np.random.default_rng(self.config.seed).choice(table.shape[0], n, replace=False)
            return table[rows]
        if how == "phrase":
            ids = self.tokenizer(self.config.prompt.init_phrase, add_special_tokens=False)[
                "input_ids"
            ]
            if not ids:
                raise ValueError(
                    "config.prompt.init='phrase' needs a non-empty config.prompt.init_phrase."
                )
            return table[[ids[i % len(ids)] for i in range(n)]]
        raise ValueError(f"config.prompt.init={how!r}; choose random, mask, vocab or phrase.")


def load_task(config: ml_collections.ConfigDict) -> tasks.TaskSpec:
    """The config's task, with labels discovered from the data for tasks that need it."""
    task = tasks.get_task(config.task)
    if not task.label_names:
        if config.data.source != "local":
            raise ValueError(
                f"Task {task.name!r} reads labels from local files: set "
                "--config.data.source=local --config.data.dir=DIR."
            )
        task = task.with_labels(data_lib.discover_labels(task, config.data.dir))
    return task


def load_whole_split(
    config: ml_collections.ConfigDict, task: tasks.TaskSpec, split: str
) -> list[data_lib.Example]:
    """Every example of the split, from the config's data source (no few-shot subset, no cap)."""
    return data_lib.load_split(
        task,
        split,
        config.data.source,
        config.data.dir or None,
        label_names=task.label_names,
        hf_path=config.data.get("hf_path") or None,
    )


def load_examples(
    config: ml_collections.ConfigDict, task: tasks.TaskSpec, split: str
) -> list[data_lib.Example]:
    """The split's examples: the few-shot subset for train, capped for dev."""
    examples = load_whole_split(config, task, split)
    if split == "train":
        return data_lib.few_shot_subset(examples, config.data.few_shot, config.seed)
    if config.data.max_eval_examples:
        return examples[: config.data.max_eval_examples]
    return examples


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of the config as a run reads it: references resolved, the released variant's
    knobs applied. It is what the run's `config.json` records."""
    config = config.copy_and_resolve_references()
    if config.variant == "released":
        methods.apply_released_variant(config)
    return config


def _check_idpg_fits(config: ml_collections.ConfigDict, model_dir: pathlib.Path) -> None:
    """Refuses IDPG PHM factors that do not divide the encoder width, before it loads."""
    if config.method != "idpg":
        return
    hidden_size = json.loads((model_dir / "config.json").read_text()).get("hidden_size")
    if hidden_size is not None:  # Other widths' names are checked when the generator is built.
        idpg.check_shapes(
            hidden_size,
            config.prompt.num_tokens,
            config.model.get("idpg_hidden", 256),
            config.model.get("idpg_phm_n", 16),
        )


def build_components(
    config: ml_collections.ConfigDict, task: tasks.TaskSpec | None = None
) -> Components:
    """Loads the encoder and tokenizer and builds the model the config describes."""
    import transformers  # Heavy import, deferred to where it is needed.

    config = resolve_config(config)
    task = task or load_task(config)
    if config.model.dtype not in DTYPES:
        raise ValueError(
            f"config.model.dtype={config.model.dtype!r}; choose one of {sorted(DTYPES)}."
        )
    attention = config.model.get("attention", "einsum")  # Exports made before the option.
    if attention not in encoder_lib.ATTENTION_KINDS:
        raise ValueError(
            f"config.model.attention={attention!r}; choose one of "
            f"{encoder_lib.ATTENTION_KINDS} (fused: cuDNN attention on a GPU)."
        )
    model_dir = pretrained.resolve_model_dir(config.model.name)
    _check_idpg_fits(config, model_dir)
    mlm_transform = pretrained.load_mlm_transform(model_dir)
    method = methods.resolve(config, task.num_labels, has_mlm_transform=mlm_transform is not None)
    encoder, encoder_params = pretrained.load_pretrained(
        model_dir,
        DTYPES[config.model.dtype],
        adapter_size=method.adapter_size,
        remat=config.model.remat,
        attention=attention,
        rng=jax.random.PRNGKey(config.seed),
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    pretrained.check_tokenizer_vocab(tokenizer, encoder.config, model_dir)
    template_tokenizer = templates.TemplateTokenizer(
        tokenizer,
        config.data.template or task.template,
        method.model.num_prompt_tokens,
        config.max_len,
        use_token_types=encoder.config.type_vocab_size > 1,
    )
    model = models.InfoPromptModel(method.model, encoder.config, dtype=DTYPES[config.model.dtype])
    verbalizer_ids = templates.verbalizer_token_ids(tokenizer, task.verbalizers)
    return Components(
        config,
        task,
        model_dir,
        tokenizer,
        template_tokenizer,
        method,
        model,
        encoder_params,
        mlm_transform,
        verbalizer_ids,
    )
