"""Default configuration: InfoPrompt on RTE with roberta-large, the paper's hyperparameters.

Every field is overridable from the command line, e.g. `--config.optim.lr=3e-4`.
Variants: `--config=configs/default.py:tiny` is a seconds-long debug run (see `apply_variant`).
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Returns the default config; `variant` may be "tiny"."""
    config = ml_collections.ConfigDict()
    # Task name: rte | mrpc | cola | sst2 | semeval | ace_re | ace_ner (infoprompt_jax/data/tasks.py).
    config.task = "rte"
    # Method: infoprompt | idpg | warp | adapter | finetune (docs/design.md, "What trains").
    config.method = "infoprompt"
    # "paper" follows the paper; "released" switches every knob to the authors' released code.
    config.variant = "paper"
    # Seed of the parameter init, the data order, the few-shot subset and the critics' sampling.
    config.seed = 0
    # Longest sequence: text is truncated to fit (never a prompt slot, the mask or a special).
    config.max_len = 128
    # Shorter lengths a batch is cut to when its rows fit (only padding is cut): each length,
    # and max_len, compiles the steps once. () keeps every batch at max_len.
    config.length_buckets = (32, 64)
    # Precompute the unprompted pass once per example, train and dev (the encoder is frozen and
    # deterministic): InfoPrompt and IDPG then run one encoder pass per eval batch, not two. A
    # run whose cache would not fit the host's memory says so and goes without it.
    config.cache_unprompted = True
    # Save the prompt of the first example every this many steps (0: never); for the landscape.
    config.log_prompt_every = 0

    config.model = ml_collections.ConfigDict()
    # Hugging Face hub id or local directory with config.json and model.safetensors.
    config.model.name = "roberta-large"
    # Compute dtype of the frozen encoder: float32 | bfloat16. Trainable params stay float32.
    config.model.dtype = "float32"
    # Rematerialise encoder layers in the backward pass (less memory, more compute).
    config.model.remat = False
    # Attention kernel: "einsum" (two matmuls around an fp32 softmax) or "fused"
    # (jax.nn.dot_product_attention: cuDNN flash attention on a GPU in bf16, XLA elsewhere).
    config.model.attention = "einsum"
    # Bottleneck width of the Adapter baseline's adapters (method=adapter only).
    config.model.adapter_size = 64
    # IDPG's generator (method=idpg; Wu et al. 2022): bottleneck width m of its d -> m -> n_p*d
    # perceptron (IDPG paper: 256), and n, the Kronecker terms of each PHM layer (paper: 16; n
    # must divide d, m and n_p*d).
    config.model.idpg_hidden = 256
    config.model.idpg_phm_n = 16
    # Where IDPG's prompts go: input (S-IDPG, the prompt slots of the input) | all (M-IDPG: also
    # written over the prompt slots before every later encoder layer).
    config.model.idpg_layers = "input"

    config.data = ml_collections.ConfigDict()
    # Where splits come from: hf (Hugging Face datasets) | tfds | local (GLUE-format files).
    config.data.source = "hf"
    # source=local: the task's files (GLUE: train.tsv and dev.tsv); source=tfds: the TFDS
    # data_dir ("" = $TFDS_DATA_DIR, else ~/tensorflow_datasets).
    config.data.dir = ""
    # source=hf: a hub id or a local copy of a hub dataset repo replacing the task's dataset
    # ("" = the task's, nyu-mll/glue for GLUE), e.g. the folder of an hf download --local-dir.
    config.data.hf_path = ""
    # 0: the full training set; N: N examples drawn with config.seed (same for every method).
    config.data.few_shot = 0
    # Template override; empty uses the task's template (the string language of templates.py).
    config.data.template = ""
    # Evaluate on at most this many dev examples (0: all).
    config.data.max_eval_examples = 0

    config.prompt = ml_collections.ConfigDict()
    # n_p, the number of prompt tokens (paper: 1 or 4).
    config.prompt.num_tokens = 4
    # Rank r of each token's generator W_up_i W_down_i (paper: 64).
    config.prompt.generator_rank = 64
    # Bias in the generator's projections (off in the paper).
    config.prompt.generator_bias = False
    # Nonlinearity between the generator's projections: none | gelu.
    config.prompt.generator_activation = "none"
    # Standard deviation of prompt entries at init.
    config.prompt.init_scale = 0.05
    # WARP's free-prompt init: random | mask (the <mask> embedding) | vocab (sampled words) |
    # phrase (the word embeddings of prompt.init_phrase, cycled to n_p tokens).
    config.prompt.init = "mask"
    config.prompt.init_phrase = ""

    config.loss = ml_collections.ConfigDict()
    # Weight of the representation loss -I(P; Z | X) (paper: 0.1).
    config.loss.beta = 0.1
    # Weight of the head loss -I(P; theta | X) (paper: 0.05).
    config.loss.gamma = 0.05
    # K, candidates per InfoNCE term: one positive and K-1 negatives (paper: 32).
    config.loss.num_candidates = 32
    # d_z, width of the representation critic's Gaussian.
    config.loss.representation_dim = 64
    # Critic form: bilinear (paper, W1 and W2) | scaled_dot (released code).
    config.loss.critic = "bilinear"
    # Head-loss negatives: sampled (K-1 context tokens) | all_context (released code).
    config.loss.head_negatives = "sampled"
    # Representation-loss negatives (docs/design.md, "Negatives of the representation term"):
    # unprompted (paper: samples around the unprompted Z0) | other_examples (the prompted Z of
    # the batch's other examples; no extra pass) | other_prompts (the same input under the batch's
    # other prompts: min(K-1, B-1) more prompted passes per step).
    config.loss.representation_negatives = "unprompted"
    # Per-example clamp of each InfoNCE term (released code: 2.0); 0 disables it.
    config.loss.nce_clamp = 0.0
    # Released code's variational head: bottleneck width (0: none) and its KL weight.
    config.loss.head_bottleneck_dim = 0
    config.loss.kl_weight = 0.0

    config.optim = ml_collections.ConfigDict()
    # Peak AdamW learning rate of prompt-tuning methods (paper: 1e-3).
    config.optim.lr = 1e-3
    # Peak learning rate when method=finetune (every encoder weight trains).
    config.optim.finetune_lr = 1e-5
    # Fraction of steps of linear warmup; linear decay to 0 follows.
    config.optim.warmup_fraction = 0.06
    config.optim.weight_decay = 0.0
    # Global gradient-norm clip.
    config.optim.clip_norm = 1.0

    config.train = ml_collections.ConfigDict()
    config.train.num_epochs = 30
    # Global batch size (split over all devices).
    config.train.batch_size = 8
    config.train.eval_batch_size = 32
    # Lengths dev batches are cut to (shortest rows first), then max_len. An eval length compiles
    # a forward pass only, so evaluation affords finer buckets than training.
    config.train.eval_length_buckets = (16, 24, 32, 48, 64, 96)
    # Evaluate on the dev split every this many epochs (and after the last one).
    config.train.eval_every_epochs = 1
    # Evaluate every this many steps instead (0: per eval_every_epochs); for learning curves.
    config.train.eval_every_steps = 0
    # Write train metrics every this many steps.
    config.train.log_every_steps = 10
    # Save a checkpoint every this many steps (0: at the end of every epoch).
    config.train.checkpoint_every_steps = 0
    # How many of the latest checkpoints to keep.
    config.train.keep_checkpoints = 2

    config.mesh = ml_collections.ConfigDict()
    # Device mesh: data-parallel size (-1: all devices not used by fsdp) and fsdp size.
    config.mesh.data = -1
    config.mesh.fsdp = 1

    if variant:
        apply_variant(config, variant)
    return config


def apply_variant(config: ml_collections.ConfigDict, variant: str) -> None:
    """Applies a named variant in place."""
    if variant == "tiny":
        # Seconds on a CPU: for tests and smoke runs (the model is still whatever model.name is).
        config.max_len = 32
        config.length_buckets = (16,)
        config.train.num_epochs = 2
        config.train.batch_size = 4
        config.train.eval_batch_size = 8
        config.train.log_every_steps = 1
        config.loss.num_candidates = 4
        config.loss.representation_dim = 8
        config.prompt.generator_rank = 4
        config.prompt.num_tokens = 2
        config.data.few_shot = 16
        config.data.max_eval_examples = 16
    else:
        raise ValueError(f"Unknown config variant {variant!r}; known: tiny.")
