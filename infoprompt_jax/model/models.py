"""The InfoPrompt model: prompt generator, task head, the two critics, and the forward pass.

`InfoPromptModel.__call__` computes, for one batch, the passes of the method (docs/design.md,
steps 1-4) and, through `objective.py`, every per-example term of the objective (steps 5-6);
`objective.infoprompt_objective` combines them (step 7). A method
(InfoPrompt, its ablations, IDPG, WARP, Adapter, Fine-tuning) is a `ModelConfig` plus a choice of
trainable parameters (`trainable.py`), never a different model.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from infoprompt_jax.model import encoder as encoder_lib
from infoprompt_jax.model import families, idpg, losses, objective

Batch = Mapping[str, jax.Array]
REPRESENTATION_NEGATIVES = ("unprompted", "other_examples", "other_prompts")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static configuration of the InfoPrompt model.

    Attributes:
        num_classes: C, the number of labels.
        num_prompt_tokens: n_p (1 or 4 in the paper; 0 for Adapter and Fine-tuning).
        prompt_source: "generator" (InfoPrompt, IDPG: prompts from the unprompted <s> state),
            "free" (WARP: n_p trainable vectors), or "none" (no prompt slots).
        generator: "paper" (per-token W_up_i W_down_i of rank `generator_rank`), "released"
            (the authors' code: one shared Linear(D, rank) -> GELU -> Linear(rank, n_p * D)) or
            "idpg" (IDPG's PHM bottleneck, `idpg.IdpgGenerator`).
        generator_rank: r (paper: 64; released code: 32).
        idpg_hidden: m, the IDPG generator's bottleneck width (IDPG paper: 256).
        idpg_phm_n: n, Kronecker terms of each IDPG PHM layer (IDPG paper: 16).
        idpg_layers: "input" (S-IDPG: prompts at the input only) or "all" (M-IDPG: prompts
            written over the prompt slots before every encoder layer).
        generator_bias: adds a bias to both generator projections (off in the paper).
        generator_activation: "none" (paper) or "gelu" between the two projections.
        prompt_init_scale: standard deviation of the generated prompt entries at init.
        has_mlm_transform: whether the head starts with the pretrained MLM transform.
        representation_dim: d_z of the representation critic's Gaussian.
        num_candidates: K, one positive and K-1 negatives in each InfoNCE term.
        use_representation_critic: builds the representation critic (beta > 0).
        use_head_critic: builds the head critic (gamma > 0).
        critic: "bilinear" (paper: W1, W2) or "scaled_dot" (released: dot / sqrt(D), W2
            replaced by a linear map of the detached prompt).
        head_negatives: "sampled" (paper: K-1 context tokens drawn with replacement) or
            "all_context" (released: every non-padding context token).
        head_bottleneck_dim: 0 (paper) or the released code's variational bottleneck width (32)
            between the head transform and the class vectors.
        representation_negatives: "unprompted" (paper: samples around Z0), "other_examples"
            (the batch's other prompted Z) or "other_prompts" (this input under the batch's
            other prompts); see `objective.representation_nce`.
    """

    num_classes: int
    num_prompt_tokens: int = 4
    prompt_source: str = "generator"
    generator: str = "paper"
    generator_rank: int = 64
    idpg_hidden: int = 256
    idpg_phm_n: int = 16
    idpg_layers: str = "input"
    generator_bias: bool = False
    generator_activation: str = "none"
    prompt_init_scale: float = 0.05
    has_mlm_transform: bool = True
    representation_dim: int = 64
    num_candidates: int = 32
    use_representation_critic: bool = True
    use_head_critic: bool = True
    critic: str = "bilinear"
    head_negatives: str = "sampled"
    head_bottleneck_dim: int = 0
    representation_negatives: str = "unprompted"

    def __post_init__(self):
        choices = {
            "prompt_source": ("generator", "free", "none"),
            "generator": ("paper", "released", "idpg"),
            "idpg_layers": idpg.IDPG_LAYERS,
            "generator_activation": ("none", "gelu"),
            "critic": ("bilinear", "scaled_dot"),
            "head_negatives": ("sampled", "all_context"),
            "representation_negatives": REPRESENTATION_NEGATIVES,
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"ModelConfig.{field}={getattr(self, field)!r}; allowed: {allowed}."
                )
        if self.prompt_source == "none" and (
            self.use_head_critic or self.use_representation_critic
        ):
            raise ValueError(
                "The InfoPrompt critics need prompts: prompt_source='none' requires "
                "beta = gamma = 0."
            )
        if self.idpg_layers != "input" and self.generator != "idpg":
            raise ValueError(
                f"idpg_layers={self.idpg_layers!r} is IDPG's option; generator={self.generator!r}"
                " has prompts at the input only: set method=idpg or idpg_layers='input'."
            )
        if self.num_candidates < 2:
            raise ValueError(f"num_candidates={self.num_candidates}: InfoNCE needs K >= 2.")


class PromptGenerator(nn.Module):
    """Instance-dependent prompts from the unprompted <s> state (docs/design.md, step 2)."""

    config: ModelConfig
    hidden_size: int

    @nn.compact
    def __call__(self, generator_input_BxD: jax.Array) -> jax.Array:
        cfg, d = self.config, self.hidden_size
        n, r = cfg.num_prompt_tokens, cfg.generator_rank
        # Entries of the rank-r code have unit scale for layer-normed inputs; the up projection
        # then sets the prompt entries to `prompt_init_scale`, the scale of word embeddings.
        down_init = nn.initializers.normal(stddev=d**-0.5)
        up_init = nn.initializers.normal(stddev=cfg.prompt_init_scale * r**-0.5)
        if cfg.generator == "released":
            code_BxR = nn.gelu(
                nn.Dense(r, kernel_init=down_init, name="down")(generator_input_BxD),
                approximate=False,
            )
            flat_BxND = nn.Dense(n * d, kernel_init=up_init, name="up")(code_BxR)
            return flat_BxND.reshape(-1, n, d)
        down_NxDxR = self.param("down", down_init, (n, d, r))
        up_NxRxD = self.param("up", up_init, (n, r, d))
        code_BxNxR = jnp.einsum("bd,ndr->bnr", generator_input_BxD, down_NxDxR)
        if cfg.generator_bias:
            code_BxNxR += self.param("down_bias", nn.initializers.zeros, (n, r))
        if cfg.generator_activation == "gelu":
            code_BxNxR = nn.gelu(code_BxNxR, approximate=False)
        prompts_BxNxD = jnp.einsum("bnr,nrd->bnd", code_BxNxR, up_NxRxD)
        if cfg.generator_bias:
            prompts_BxNxD += self.param("up_bias", nn.initializers.zeros, (n, d))
        return prompts_BxNxD


class TaskHead(nn.Module):
    """`h_theta`: frozen MLM transform (if any), then class vectors Theta (docs/design.md, step 4).

    The class vectors are overwritten after init with the verbalizer words' embeddings, and the
    transform with the checkpoint's MLM head (see `model_init.init_params`).
    """

    config: ModelConfig
    hidden_size: int
    layer_norm_eps: float = 1e-5

    def setup(self):
        d = self.hidden_size
        if self.config.has_mlm_transform:
            self.mlm_transform = MlmTransform(d, self.layer_norm_eps)
        if self.config.head_bottleneck_dim:
            self.bottleneck_mu = nn.Dense(self.config.head_bottleneck_dim)
            self.bottleneck_sigma = nn.Dense(self.config.head_bottleneck_dim)
            self.bottleneck_out = nn.Dense(d)
        self.class_vectors = self.param(
            "class_vectors", nn.initializers.normal(0.02), (self.config.num_classes, d)
        )
        self.class_bias = self.param(
            "class_bias", nn.initializers.zeros, (self.config.num_classes,)
        )

    def __call__(
        self, z_BxD: jax.Array, noise_key: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """Returns (logits [B, C], KL of the released variational bottleneck [B] or zeros)."""
        h_BxD = self.mlm_transform(z_BxD) if self.config.has_mlm_transform else z_BxD
        kl_B = jnp.zeros(z_BxD.shape[:1], jnp.float32)
        if self.config.head_bottleneck_dim:
            mu_BxH = self.bottleneck_mu(h_BxD)
            sigma_BxH = nn.softplus(self.bottleneck_sigma(h_BxD))
            kl_B = losses.gaussian_kl_to_standard_normal(mu_BxH, sigma_BxH)
            code_BxH = mu_BxH
            if noise_key is not None:  # sample while training, use the mean at evaluation
                code_BxH = mu_BxH + sigma_BxH * jax.random.normal(noise_key, mu_BxH.shape)
            h_BxD = self.bottleneck_out(code_BxH)
        return h_BxD @ self.class_vectors.T + self.class_bias, kl_B

    def pooled_class_vector(self) -> jax.Array:
        """theta = mean_c Theta_c: label-free, as the head loss must be (docs/design.md, step 5)."""
        return jnp.mean(self.class_vectors, axis=0)


class MlmTransform(nn.Module):
    """The pretrained MLM head's dense -> gelu -> layer norm."""

    hidden_size: int
    layer_norm_eps: float

    @nn.compact
    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        x_BxD = nn.gelu(nn.Dense(self.hidden_size, name="dense")(x_BxD), approximate=False)
        return nn.LayerNorm(epsilon=self.layer_norm_eps, name="layer_norm")(x_BxD)


class HeadCritic(nn.Module):
    """Critic of -I(P; theta | X): scores `c^T W1 theta` of candidate vectors c (step 5)."""

    config: ModelConfig
    hidden_size: int

    @nn.compact
    def __call__(self, candidates_BxKxD: jax.Array, theta_D: jax.Array) -> jax.Array:
        if self.config.critic == "scaled_dot":
            return candidates_BxKxD @ theta_D / jnp.sqrt(float(self.hidden_size))
        w1_DxD = self.param("w1", nn.initializers.lecun_normal(), (self.hidden_size,) * 2)
        return candidates_BxKxD @ (w1_DxD @ theta_D)


class RepresentationCritic(nn.Module):
    """Critic of -I(P; Z | X) with a Gaussian posterior over the representation (step 6)."""

    config: ModelConfig
    hidden_size: int

    def setup(self):
        # No bias on f_mu: it would shift the positive and every negative by the same
        # P_bar^T W2 b, to which InfoNCE is invariant, so its gradient is exactly zero and Adam
        # would only random-walk it on rounding noise.
        self.f_mu = nn.Dense(self.config.representation_dim, use_bias=False)
        self.f_sigma = nn.Dense(self.config.representation_dim)
        if self.config.critic == "scaled_dot":
            self.prompt_projection = nn.Dense(self.config.representation_dim)
        else:
            self.w2 = self.param(
                "w2",
                nn.initializers.lecun_normal(),
                (self.hidden_size, self.config.representation_dim),
            )

    def posterior(self, z_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and standard deviation of the Gaussian over the representation."""
        return self.f_mu(z_BxD), nn.softplus(self.f_sigma(z_BxD))

    def __call__(self, prompt_mean_BxD: jax.Array, candidates_BxKxZ: jax.Array) -> jax.Array:
        if self.config.critic == "scaled_dot":
            query_BxZ = self.prompt_projection(jax.lax.stop_gradient(prompt_mean_BxD))
            scale = jnp.sqrt(float(self.config.representation_dim))
            return jnp.einsum("bkz,bz->bk", candidates_BxKxZ, query_BxZ) / scale
        return jnp.einsum("bkz,bz->bk", candidates_BxKxZ, prompt_mean_BxD @ self.w2)


class InfoPromptModel(nn.Module):
    """Frozen encoder + prompts + head + critics; one forward pass for every method."""

    config: ModelConfig
    encoder_config: encoder_lib.EncoderConfig
    dtype: Any = jnp.float32

    def setup(self):
        cfg, d = self.config, self.encoder_config.hidden_size
        self.encoder = families.build_encoder(self.encoder_config, self.dtype)
        if cfg.idpg_layers == "all" and not isinstance(self.encoder, encoder_lib.Encoder):
            raise ValueError(
                f"model.idpg_layers='all' (M-IDPG) inserts prompts at every layer of the "
                f"RoBERTa and BERT encoders only, not {type(self.encoder_config).__name__}: "
                "use model.idpg_layers='input' (S-IDPG) with this encoder."
            )
        if cfg.generator == "idpg":
            self.prompt_generator = idpg.IdpgGenerator(
                d,
                cfg.num_prompt_tokens,
                cfg.idpg_hidden,
                cfg.idpg_phm_n,
                self.encoder_config.num_hidden_layers if cfg.idpg_layers == "all" else 1,
                cfg.prompt_init_scale,
            )
        elif cfg.prompt_source == "generator":
            self.prompt_generator = PromptGenerator(cfg, d)
        elif cfg.prompt_source == "free":
            self.prompt = self.param(
                "prompt", nn.initializers.normal(cfg.prompt_init_scale), (cfg.num_prompt_tokens, d)
            )
        self.task_head = TaskHead(cfg, d, self.encoder_config.layer_norm_eps)
        if cfg.use_head_critic:
            self.head_critic = HeadCritic(cfg, d)
        if cfg.use_representation_critic:
            self.representation_critic = RepresentationCritic(cfg, d)

    def word_embeddings(self, token_ids: jax.Array) -> jax.Array:
        """Rows of the encoder's (frozen) word-embedding table, float32."""
        table = self.encoder.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
        return encoder_lib.embedding_lookup(table, token_ids).astype(jnp.float32)

    def _encode(self, **inputs) -> jax.Array:
        # (M-IDPG adds `layer_hook`, which the encoder calls before each later layer.)
        positions = families.position_ids_from_mask(self.encoder_config, inputs["attention_mask"])
        return self.encoder(position_ids=positions, **inputs).astype(jnp.float32)

    def unprompted_pass(self, batch: Batch) -> dict[str, jax.Array]:
        """Step 1: P_src = H0[<s>], Z0 = H0[<mask>]; nothing is differentiated through it."""
        # Only the two rows read are computed in the last layer.
        rows_Bx2 = jnp.stack(
            [jnp.zeros_like(batch["unprompted_mask_position"]), batch["unprompted_mask_position"]],
            axis=1,
        )
        h0_Bx2xD = jax.lax.stop_gradient(
            self._encode(
                input_ids=batch["unprompted_input_ids"],
                attention_mask=batch["unprompted_attention_mask"],
                token_type_ids=batch["unprompted_token_type_ids"],
                output_rows=rows_Bx2,
            )
        )
        return {"generator_input": h0_Bx2xD[:, 0], "z0": h0_Bx2xD[:, 1]}

    def prompts(self, batch: Batch, generator_input_BxD: jax.Array | None) -> jax.Array:
        """Step 2: the n_p prompt vectors of each example, `[B, n_p, D]`."""
        batch_size = batch["input_ids"].shape[0]
        if self.config.prompt_source == "generator":
            return self.prompt_generator(generator_input_BxD)
        if self.config.prompt_source == "free":
            return jnp.broadcast_to(self.prompt, (batch_size,) + self.prompt.shape)
        return jnp.zeros((batch_size, 0, self.encoder_config.hidden_size), jnp.float32)

    def prompted_pass(self, batch: Batch, prompts_BxNxD: jax.Array) -> jax.Array:
        """Step 3: Z = H[<mask>] with the prompts placed at the prompt slots."""
        embeds_BxLxD = self.word_embeddings(batch["input_ids"])
        rows_Bx1 = jnp.arange(embeds_BxLxD.shape[0])[:, None]
        embeds_BxLxD = embeds_BxLxD.at[rows_Bx1, batch["prompt_positions"]].set(prompts_BxNxD)
        hook_kwargs = {}
        if self.config.idpg_layers == "all":
            hook_kwargs = {"layer_hook": self._layer_prompt_writer(batch["prompt_positions"])}
        h_Bx1xD = self._encode(
            inputs_embeds=embeds_BxLxD.astype(self.dtype),
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            output_rows=batch["mask_position"][:, None],
            **hook_kwargs,
        )
        return h_Bx1xD[:, 0]

    def _layer_prompt_writer(self, prompt_positions_BxN: jax.Array):
        """M-IDPG: `hook(layer, h)` writes the layer's prompts over the prompt slots of h.

        The prompts of layer l come from the previous layer's output at the first token (<s>),
        as the input layer's come from the unprompted pass's.
        """
        rows_Bx1 = jnp.arange(prompt_positions_BxN.shape[0])[:, None]

        def write(layer: int, h_BxLxD: jax.Array) -> jax.Array:
            prompts_BxNxD = self.prompt_generator(h_BxLxD[:, 0], layer)
            return h_BxLxD.at[rows_Bx1, prompt_positions_BxN].set(
                prompts_BxNxD.astype(h_BxLxD.dtype)
            )

        return write

    def __call__(self, batch: Batch, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """The forward pass.

        Args:
            batch: a tokenized batch (docs/architecture.md), with `label` when training.
            rng: randomness of the critics' negatives and samples; None evaluates (logits only,
                deterministic).

        Returns:
            `logits` [B, C], `prompts` [B, n_p, D], and when `rng` is given the per-example
            terms `ce`, `nce_rep`, `nce_head`, `kl` [B] (zeros for the terms a config omits).
        """
        cfg = self.config
        if self.is_initializing():
            # Creates the encoder's params (the word-embedding table above all) on every path.
            self._encode(
                input_ids=batch["unprompted_input_ids"],
                attention_mask=batch["unprompted_attention_mask"],
                token_type_ids=batch["unprompted_token_type_ids"],
            )
        needs_unprompted = cfg.prompt_source == "generator" or (
            rng is not None
            and cfg.use_representation_critic
            and cfg.representation_negatives == "unprompted"
        )
        if "cached_generator_input" in batch:  # config.cache_unprompted: computed once per example.
            unprompted = {
                "generator_input": batch["cached_generator_input"],
                "z0": batch["cached_z0"],
            }
        else:
            unprompted = self.unprompted_pass(batch) if needs_unprompted else {}
        prompts_BxNxD = self.prompts(batch, unprompted.get("generator_input"))
        z_BxD = self.prompted_pass(batch, prompts_BxNxD)
        keys = jax.random.split(rng, 3) if rng is not None else [None] * 3
        logits_BxC, kl_B = self.task_head(z_BxD, keys[0])
        outputs = {"logits": logits_BxC, "prompts": prompts_BxNxD}
        if rng is None:
            return outputs
        terms = objective.per_example_terms(
            self, batch, prompts_BxNxD, z_BxD, unprompted.get("z0"), logits_BxC, kl_B, keys[1:]
        )
        return {**outputs, **terms}
