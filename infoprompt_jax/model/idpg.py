"""IDPG's prompt generator (Wu et al. 2022, arXiv 2204.04497): a PHM bottleneck perceptron.

S-IDPG-PHM maps the sentence representation `P_src` (the unprompted pass's first-token state) to
the `n_p` input prompts through `d -> m -> n_p * d` with a GELU between the two layers. Each
layer's weight is a PHM product `W = sum_i A_i kron B_i` (i = 1..n): the `n x n` matrices `A_i`
are shared by both layers, the `B_i` belong to one layer. M-IDPG-PHM also writes prompts over
the prompt slots before every later encoder layer, generated from the previous layer's
first-token state by the same weights plus a per-layer pair of biases (docs/design.md, "IDPG").
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

IDPG_LAYERS = ("input", "all")


def phm_kernel(a_NxNxN: jax.Array, b_NxIxO: jax.Array) -> jax.Array:
    """`sum_i kron(A_i, B_i)`: the `[n * I, n * O]` weight of a PHM layer.

    Args:
        a_NxNxN: the n matrices `A_i`, each `n x n`.
        b_NxIxO: the n matrices `B_i`, each `I x O` (I = in / n, O = out / n).
    """
    n, rows, cols = b_NxIxO.shape
    # kron(A, B)[(p, a), (q, b)] = A[p, q] B[a, b]: row index p * I + a, column q * O + b.
    return jnp.einsum("ipq,iab->paqb", a_NxNxN, b_NxIxO).reshape(n * rows, n * cols)


def generator_param_count(
    hidden_size: int, num_prompt_tokens: int, hidden: int, phm_n: int, num_layers: int = 1
) -> int:
    """Trainable parameters of the generator `IdpgGenerator` builds.

    `n^3` for the shared `A_i`, `d m / n` and `m n_p d / n` for the two layers' `B_i`, the two
    biases `m + n_p d`, and for M-IDPG one more pair of biases per encoder layer after the first.

    Args:
        hidden_size: d, the encoder width.
        num_prompt_tokens: n_p.
        hidden: m, the bottleneck width.
        phm_n: n, the number of Kronecker terms.
        num_layers: encoder layers that receive prompts (1: S-IDPG; the encoder depth: M-IDPG).
    """
    d, m, n, out = hidden_size, hidden, phm_n, num_prompt_tokens * hidden_size
    biases = m + out
    return n**3 + d * m // n + m * out // n + biases * num_layers


def check_shapes(hidden_size: int, num_prompt_tokens: int, hidden: int, phm_n: int) -> None:
    """Raises ValueError, naming the field and the fix, unless the PHM factors fit the shapes.

    A PHM layer of in x out needs n to divide both: here d, m and n_p * d.
    """
    if hidden < 1:
        raise ValueError(f"config.model.idpg_hidden={hidden}: give a bottleneck width m >= 1.")
    if phm_n < 1:
        raise ValueError(f"config.model.idpg_phm_n={phm_n}: give a PHM factor count n >= 1.")
    for name, size in (
        ("the encoder width d", hidden_size),
        ("config.model.idpg_hidden (m)", hidden),
        ("n_p * d", num_prompt_tokens * hidden_size),
    ):
        if size % phm_n:
            raise ValueError(
                f"config.model.idpg_phm_n={phm_n} does not divide {name} = {size}: each PHM "
                f"layer splits its in and out widths into n blocks; pick an n that divides "
                f"d = {hidden_size} and m = {hidden} (e.g. 16 or 8)."
            )


class IdpgGenerator(nn.Module):
    """S-IDPG-PHM / M-IDPG-PHM prompt generator.

    Attributes:
        hidden_size: d.
        num_prompt_tokens: n_p.
        hidden: m, the bottleneck width (IDPG: 256).
        phm_n: n, the number of Kronecker terms (IDPG: 16).
        num_layers: 1 (S-IDPG) or the encoder depth (M-IDPG: one bias pair per later layer).
        prompt_init_scale: standard deviation of the generated prompt entries at init.
    """

    hidden_size: int
    num_prompt_tokens: int
    hidden: int
    phm_n: int
    num_layers: int = 1
    prompt_init_scale: float = 0.05

    def setup(self):
        check_shapes(self.hidden_size, self.num_prompt_tokens, self.hidden, self.phm_n)
        d, m, n = self.hidden_size, self.hidden, self.phm_n
        out = self.num_prompt_tokens * d
        # var(W) = n var(A) var(B); with var(A) = 1/n, var(B) sets the weight's scale: the code
        # has unit scale for a layer-normed input, the prompts `prompt_init_scale`.
        self.a = self.param("phm_a", nn.initializers.normal(n**-0.5), (n, n, n))
        self.down_b = self.param("down_b", nn.initializers.normal(d**-0.5), (n, d // n, m // n))
        up_std = self.prompt_init_scale * m**-0.5
        self.up_b = self.param("up_b", nn.initializers.normal(up_std), (n, m // n, out // n))
        self.down_bias = self.param("down_bias", nn.initializers.zeros, (m,))
        self.up_bias = self.param("up_bias", nn.initializers.zeros, (out,))
        if self.num_layers > 1:
            later = self.num_layers - 1
            self.layer_down_bias = self.param("layer_down_bias", nn.initializers.zeros, (later, m))
            self.layer_up_bias = self.param("layer_up_bias", nn.initializers.zeros, (later, out))

    def __call__(self, sentence_BxD: jax.Array, layer: int = 0) -> jax.Array:
        """Prompts `[B, n_p, d]` for encoder layer `layer` (0: the input embeddings).

        Args:
            sentence_BxD: the sentence representation: `P_src` for layer 0, the previous
                layer's first-token state for a later one.
            layer: which layer's biases to use; > 0 only for M-IDPG.
        """
        down_bias, up_bias = self.down_bias, self.up_bias
        if layer:
            down_bias, up_bias = self.layer_down_bias[layer - 1], self.layer_up_bias[layer - 1]
        down_DxM = phm_kernel(self.a, self.down_b)
        up_MxND = phm_kernel(self.a, self.up_b)
        code_BxM = nn.gelu(
            sentence_BxD.astype(jnp.float32) @ down_DxM + down_bias, approximate=False
        )
        flat_BxND = code_BxM @ up_MxND + up_bias
        return flat_BxND.reshape(-1, self.num_prompt_tokens, self.hidden_size)
