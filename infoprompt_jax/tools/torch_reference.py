"""The InfoPrompt train step in PyTorch eager: the baseline `bench.py --compare_torch` times.

It does the work of `steps.train_step` (docs/design.md, "The forward pass") with the Hugging
Face PyTorch encoder, frozen (`requires_grad=False`, eval mode):

1. unprompted pass under `no_grad`: `P_src = H0[<s>]`, `Z0 = H0[<mask>]` (or, with
   `config.cache_unprompted`, their values precomputed by the JAX run, as training reads them);
2. generator: per token `p_i = W_up_i W_down_i P_src` of rank r (or WARP's free prompt);
3. prompted pass through `inputs_embeds`, the prompts scattered into the word embeddings at the
   prompt slots, with explicit `position_ids` as the Flax model passes them;
4. head: the frozen MLM transform when the checkpoint has one, then the class vectors; CE;
5. head critic: K-1 context tokens sampled with replacement, bilinear `c^T W1 theta`;
6. representation critic: `f_mu`, `softplus(f_sigma)`, K-1 negatives from `Z0`, `P_bar^T W2 z`;
7. `CE + beta NCE_rep + gamma NCE_head`, backward, global-norm clip, AdamW.

It starts from the same parameters as the JAX run (the JAX initial trainable tree, flattened
to '/' paths with Flax layouts, so `x @ kernel + bias`), so at init its task loss equals the JAX
one; the critics' random negatives differ, so the NCE terms agree only in scale. It implements
the paper's form (and its IDPG/WARP special cases); the released-code variant and the
Adapter/Fine-tuning baselines are out of its scope. The learning rate is the schedule's peak,
constant: a schedule is a scalar per step and changes none of the work timed.
"""

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from infoprompt_jax.model import encoder as encoder_lib
from infoprompt_jax.model import models, objective
from infoprompt_jax.model import trainable as trainable_lib
from infoprompt_jax.train import components as components_lib


def to_torch(
    arrays: Mapping[str, np.ndarray], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """A host batch as tensors on `device`: ids as int64 (PyTorch's index type), cached states
    as float32."""
    return {
        name: torch.from_numpy(
            np.asarray(
                value,
                np.float32 if np.issubdtype(np.asarray(value).dtype, np.floating) else np.int64,
            )
        ).to(device)
        for name, value in arrays.items()
    }


def check_supported(model_config: models.ModelConfig, adapter_size: int) -> None:
    """Raises for the model configurations this reference does not implement."""
    unsupported = {
        "prompt_source": (model_config.prompt_source, ("generator", "free")),
        "generator": (model_config.generator, ("paper",)),
        "critic": (model_config.critic, ("bilinear",)),
        "head_negatives": (model_config.head_negatives, ("sampled",)),
        "representation_negatives": (model_config.representation_negatives, ("unprompted",)),
        "head_bottleneck_dim": (model_config.head_bottleneck_dim, (0,)),
        "adapter_size": (adapter_size, (0,)),
    }
    for field, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise ValueError(
                f"The PyTorch reference implements the paper's InfoPrompt (and IDPG, "
                f"WARP); {field}={value!r} is not supported (allowed: {allowed}). "
                "Benchmark with --config.method=infoprompt --config.variant=paper."
            )


@dataclasses.dataclass
class Hyperparameters:
    """What the step needs besides parameters.

    Attributes:
        lr: AdamW's learning rate (constant).
        weight_decay: AdamW's decoupled weight decay.
        clip_norm: the global gradient-norm clip.
        dtype: the encoder's compute dtype, "float32" or "bfloat16" (autocast).
        seed: seed of the negatives and the reparameterisation noise.
    """

    lr: float
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    dtype: str = "float32"
    seed: int = 0


class TorchReferenceStep:
    """The InfoPrompt train step on the Hugging Face encoder, eagerly.

    Attributes:
        device: where the encoder, the parameters and the step's work live.
        encoder: the frozen Hugging Face encoder (`AutoModel`, no pooler).
        params: trainable tensors by Flax path ("prompt_generator/down", ...).
        mlm_transform: frozen head transform tensors by path ("dense/kernel", ...), or empty.
        optimizer: AdamW over `params` only.
    """

    def __init__(
        self,
        model_dir: str | pathlib.Path,
        model_config: models.ModelConfig,
        encoder_config: encoder_lib.EncoderConfig,
        weights: objective.ObjectiveWeights,
        trainable: Mapping[str, Any],
        mlm_transform: Mapping[str, Any] | None,
        hyper: Hyperparameters,
        device: str | torch.device = "cpu",
    ):
        """Loads the encoder and copies the initial parameters.

        Args:
            model_dir: the Hugging Face checkpoint directory the JAX run loaded.
            model_config: the JAX model's config.
            encoder_config: the JAX encoder's config (position ids, layer-norm epsilon).
            weights: the objective's weights.
            trainable: the JAX run's initial trainable params (nested, Flax layouts).
            mlm_transform: the checkpoint's MLM transform params (nested), or None.
            hyper: optimizer and precision settings.
            device: a torch device ("cpu", "cuda"); the batch must be moved there too
                (`to_torch(arrays, device)`).
        """
        import transformers  # Heavy import, deferred to where it is needed.

        self.model_config, self.encoder_config = model_config, encoder_config
        self.weights, self.hyper = weights, hyper
        self.device = torch.device(device)
        # No pooler: the step never reads it, and the JAX encoder has none.
        self.encoder = transformers.AutoModel.from_pretrained(
            str(model_dir), add_pooling_layer=False, dtype=torch.float32
        )
        self.encoder.eval().requires_grad_(False).to(self.device)
        self.params = {
            path: torch.nn.Parameter(_tensor(value, self.device))
            for path, value in trainable_lib.flatten(trainable).items()
        }
        self.mlm_transform = {
            path: _tensor(value, self.device)
            for path, value in trainable_lib.flatten(mlm_transform or {}).items()
        }
        self.optimizer = torch.optim.AdamW(
            self.params.values(),
            lr=hyper.lr,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=hyper.weight_decay,
        )
        self.generator = torch.Generator(device=self.device).manual_seed(hyper.seed)

    @classmethod
    def from_components(
        cls,
        components: components_lib.Components,
        trainable: Mapping[str, Any],
        device: str | torch.device = "cpu",
    ) -> "TorchReferenceStep":
        """The reference of a JAX run on `device`: its checkpoint, method, optimizer and initial
        params."""
        method, config = components.method, components.config
        check_supported(method.model, method.adapter_size)
        mlm_transform = components.mlm_transform if method.model.has_mlm_transform else None
        hyper = Hyperparameters(
            lr=method.peak_lr,
            weight_decay=config.optim.weight_decay,
            clip_norm=config.optim.clip_norm,
            dtype=config.model.dtype,
            seed=config.seed,
        )
        return cls(
            components.model_dir,
            method.model,
            components.model.encoder_config,
            method.loss_weights,
            trainable,
            mlm_transform,
            hyper,
            device,
        )

    @property
    def attention_implementation(self) -> str:
        """The Hugging Face attention kernel in use ("sdpa", "eager", ...)."""
        return str(getattr(self.encoder.config, "_attn_implementation", "unknown"))

    def word_embeddings(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Rows of the frozen word-embedding table."""
        return self.encoder.get_input_embeddings()(token_ids)

    def position_ids(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """`encoder.position_ids_from_mask`: RoBERTa numbers real tokens from pad + 1."""
        if self.encoder_config.family == "roberta":
            pad = self.encoder_config.pad_token_id
            return torch.cumsum(attention_mask, dim=1) * attention_mask + pad
        return torch.arange(attention_mask.shape[1], device=self.device).expand_as(attention_mask)

    def encode(self, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        """Last hidden states `[B, L, D]` in float32."""
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.hyper.dtype == "bfloat16"
        ):
            hidden = self.encoder(
                attention_mask=attention_mask,
                position_ids=self.position_ids(attention_mask),
                **inputs,
            ).last_hidden_state
        return hidden.float()

    def unprompted_pass(
        self, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`P_src = H0[<s>]` and `Z0 = H0[<mask>]`, or their cache (`config.cache_unprompted`)."""
        if "cached_generator_input" in batch:
            return batch["cached_generator_input"], batch["cached_z0"]
        with torch.no_grad():  # Nothing is differentiated through the unprompted pass.
            h0_BxLxD = self.encode(
                batch["unprompted_attention_mask"],
                input_ids=batch["unprompted_input_ids"],
                token_type_ids=batch["unprompted_token_type_ids"],
            )
        rows_B = torch.arange(h0_BxLxD.shape[0], device=self.device)
        return h0_BxLxD[:, 0], h0_BxLxD[rows_B, batch["unprompted_mask_position"]]

    def prompts(self, generator_input_BxD: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """`[B, n_p, D]`: per token `W_up_i (W_down_i P_src)`, or the free prompt (WARP)."""
        p, cfg = self.params, self.model_config
        if cfg.prompt_source == "free":
            return p["prompt"].expand(batch_size, -1, -1)
        code_BxNxR = torch.einsum("bd,ndr->bnr", generator_input_BxD, p["prompt_generator/down"])
        if cfg.generator_bias:
            code_BxNxR = code_BxNxR + p["prompt_generator/down_bias"]
        if cfg.generator_activation == "gelu":
            code_BxNxR = F.gelu(code_BxNxR)
        prompts_BxNxD = torch.einsum("bnr,nrd->bnd", code_BxNxR, p["prompt_generator/up"])
        if cfg.generator_bias:
            prompts_BxNxD = prompts_BxNxD + p["prompt_generator/up_bias"]
        return prompts_BxNxD

    def logits(self, z_BxD: torch.Tensor) -> torch.Tensor:
        """`h_theta(Z)`: frozen MLM transform (dense -> gelu -> layer norm), then Theta."""
        h_BxD, t = z_BxD, self.mlm_transform
        if t:
            h_BxD = F.gelu(h_BxD @ t["dense/kernel"] + t["dense/bias"])
            h_BxD = F.layer_norm(
                h_BxD,
                h_BxD.shape[-1:],
                t["layer_norm/scale"],
                t["layer_norm/bias"],
                eps=self.encoder_config.layer_norm_eps,
            )
        theta_CxD = self.params["task_head/class_vectors"]
        return h_BxD @ theta_CxD.T + self.params["task_head/class_bias"]

    def head_nce(
        self, batch: Mapping[str, torch.Tensor], prompt_mean_BxD: torch.Tensor
    ) -> torch.Tensor:
        """InfoNCE of P_bar against K-1 sampled context-token embeddings, `c^T W1 theta`."""
        context_BxL = batch["unprompted_context_mask"].bool()
        fallback_BxL = batch["unprompted_attention_mask"].bool()
        context_BxL = torch.where(context_BxL.any(dim=1, keepdim=True), context_BxL, fallback_BxL)
        positions_BxN = torch.multinomial(
            context_BxL.float(),
            self.model_config.num_candidates - 1,
            replacement=True,
            generator=self.generator,
        )
        negatives_BxNxD = self.word_embeddings(
            torch.gather(batch["unprompted_input_ids"], 1, positions_BxN)
        )
        candidates_BxKxD = torch.cat([prompt_mean_BxD[:, None], negatives_BxNxD], dim=1)
        theta_D = self.params["task_head/class_vectors"].mean(dim=0)
        return info_nce(candidates_BxKxD @ (self.params["head_critic/w1"] @ theta_D))

    def representation_nce(
        self, prompt_mean_BxD: torch.Tensor, z_BxD: torch.Tensor, z0_BxD: torch.Tensor
    ) -> torch.Tensor:
        """InfoNCE of a posterior sample of Z against K-1 samples built from Z0."""
        p, prefix = self.params, "representation_critic/"

        def posterior(z):
            sigma = F.softplus(z @ p[prefix + "f_sigma/kernel"] + p[prefix + "f_sigma/bias"])
            return z @ p[prefix + "f_mu/kernel"], sigma

        mu_BxZ, sigma_BxZ = posterior(z_BxD)
        positive_BxZ = mu_BxZ + sigma_BxZ * torch.randn(
            mu_BxZ.shape, generator=self.generator, device=self.device
        )
        mu0_BxZ, sigma0_BxZ = posterior(z0_BxD)
        noise_BxNxZ = torch.randn(
            (mu0_BxZ.shape[0], self.model_config.num_candidates - 1, mu0_BxZ.shape[1]),
            generator=self.generator,
            device=self.device,
        )
        negatives_BxNxZ = mu0_BxZ[:, None] + sigma0_BxZ[:, None] * noise_BxNxZ
        candidates_BxKxZ = torch.cat([positive_BxZ[:, None], negatives_BxNxZ], dim=1)
        query_BxZ = prompt_mean_BxD @ p[prefix + "w2"]
        return info_nce(torch.einsum("bkz,bz->bk", candidates_BxKxZ, query_BxZ))

    def terms(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-example `ce`, `nce_rep`, `nce_head` `[B]` and `logits` (InfoPromptModel)."""
        cfg = self.model_config
        rows_B = torch.arange(batch["input_ids"].shape[0], device=self.device)
        # WARP without the representation critic reads nothing from the unprompted pass.
        needs_unprompted = cfg.prompt_source == "generator" or cfg.use_representation_critic
        generator_input_BxD, z0_BxD = (
            self.unprompted_pass(batch) if needs_unprompted else (None, None)
        )
        prompts_BxNxD = self.prompts(generator_input_BxD, len(rows_B))
        embeds_BxLxD = self.word_embeddings(batch["input_ids"]).index_put(
            (rows_B[:, None], batch["prompt_positions"]), prompts_BxNxD
        )
        h_BxLxD = self.encode(
            batch["attention_mask"],
            inputs_embeds=embeds_BxLxD,
            token_type_ids=batch["token_type_ids"],
        )
        z_BxD = h_BxLxD[rows_B, batch["mask_position"]]
        logits_BxC = self.logits(z_BxD)
        prompt_mean_BxD = prompts_BxNxD.mean(dim=1)
        zeros_B = torch.zeros_like(rows_B, dtype=torch.float32)
        return {
            "logits": logits_BxC,
            "ce": F.cross_entropy(logits_BxC, batch["label"], reduction="none"),
            "nce_head": (self.head_nce(batch, prompt_mean_BxD) if cfg.use_head_critic else zeros_B),
            "nce_rep": (
                self.representation_nce(prompt_mean_BxD, z_BxD, z0_BxD)
                if cfg.use_representation_critic
                else zeros_B
            ),
        }

    def objective(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`mean(CE + beta NCE_rep + gamma NCE_head)`, clamped as `objective.infoprompt_objective`."""
        nce_rep_B, nce_head_B, clamp = terms["nce_rep"], terms["nce_head"], self.weights.nce_clamp
        if clamp is not None:
            nce_rep_B, nce_head_B = nce_rep_B.clamp(max=clamp), nce_head_B.clamp(max=clamp)
        return torch.mean(
            terms["ce"] + self.weights.beta * nce_rep_B + self.weights.gamma * nce_head_B
        )

    def step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One optimisation step; returns the loss, its terms and the pre-clip gradient norm."""
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.terms(batch)
        loss = self.objective(terms)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params.values(), self.hyper.clip_norm)
        self.optimizer.step()
        return {
            "loss": loss.item(),
            "grad_norm": grad_norm.item(),
            **{name: terms[name].mean().item() for name in ("ce", "nce_rep", "nce_head")},
        }


def info_nce(scores_BxK: torch.Tensor) -> torch.Tensor:
    """`-log softmax(scores)[0]` per example, as `losses.info_nce`."""
    scores_BxK = scores_BxK.float()
    return torch.logsumexp(scores_BxK, dim=-1) - scores_BxK[:, 0]


def _tensor(value: Any, device: torch.device) -> torch.Tensor:
    # A copy: the JAX host arrays may be read-only views, and the step updates these in place.
    return torch.tensor(np.array(value, np.float32), device=device)
