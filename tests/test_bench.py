"""Tests of the benchmark (bench.py) and the PyTorch eager step it compares with."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentiment_fixture
import torch

from infoprompt_jax.model import trainable as trainable_lib
from infoprompt_jax.tools import bench, torch_reference
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import phase_timer

BATCH, SEQ_LEN = 8, 32
RESULT_KEYS = {
    "examples_per_s",
    "step_ms_median",
    "compile_s",
    "flops_per_step",
    "achieved_tflops",
    "mfu",
    "peak_device_mem_mb",
    "device_kind",
    "device_count",
    "batch_size",
    "seq_len",
    "num_prompt_tokens",
    "dtype",
    "method",
    "torch_examples_per_s",
    "jax_over_torch",
    "torch_threads",
    "torch_device",
    "torch_peak_device_mem_mb",
}


@pytest.fixture(scope="module")
def result(tiny_roberta_dir):
    """One benchmark run with --compare_torch on the tiny RoBERTa, 2 timed steps, the unprompted
    pass in the step (uncached, as the PyTorch reference computes it)."""
    config = sentiment_fixture.tiny_config(tiny_roberta_dir)
    config.cache_unprompted = False
    return bench.run_benchmark(
        config, BATCH, SEQ_LEN, num_steps=2, warmup_steps=1, compare_torch=True, torch_threads=1
    )


@pytest.fixture(scope="module")
def components(tiny_roberta_dir):
    return components_lib.build_components(sentiment_fixture.tiny_config(tiny_roberta_dir))


@pytest.fixture(scope="module")
def batch(components):
    return bench.synthetic_batch(components, BATCH)


@pytest.fixture(scope="module")
def trainable(components, batch):
    """Random params of the trainable tree's shapes (no compilation: the test is of torch)."""
    shapes = jax.eval_shape(components.init_params, batch)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.05, s.shape).astype(np.float32), shapes)
    return trainable_lib.split_params(params, components.method.name)[0]


def test_result_line_has_every_key_and_cpu_has_no_peak(result):
    assert RESULT_KEYS <= set(result), RESULT_KEYS - set(result)
    assert result["flops_per_step"] > 0 and result["examples_per_s"] > 0
    assert result["achieved_tflops"] > 0 and result["compile_s"] > 0
    assert result["mfu"] is None and result["peak_device_mem_mb"] is None, "CPU: no peak, no stats"
    assert result["device_kind"] == "cpu" and result["device_count"] == jax.device_count() == 8
    shape = (result["batch_size"], result["seq_len"], result["num_prompt_tokens"])
    assert shape == (BATCH, SEQ_LEN, 2)
    assert (result["dtype"], result["method"]) == ("float32", "infoprompt")
    np.testing.assert_allclose(result["examples_per_s"], BATCH / (result["step_ms_median"] / 1e3))
    assert math.isfinite(result["final_loss"]) and math.isfinite(result["torch_final_loss"])


def test_compare_torch_gives_a_positive_ratio(result):
    assert result["torch_examples_per_s"] > 0 and result["torch_threads"] == 1
    assert result["torch_device"] == "cpu" and result["torch_peak_device_mem_mb"] is None
    np.testing.assert_allclose(
        result["jax_over_torch"], result["examples_per_s"] / result["torch_examples_per_s"]
    )


def test_matmul_flops_counts_every_dot_with_its_gradient_and_nested_jaxprs():
    x, w = np.ones((64, 128), np.float32), np.ones((128, 256), np.float32)
    one_pass = 2 * (2 * 64 * 128 * 256)  # x @ w and (.) @ w.T

    def loss(x, w):  # Under jit and checkpoint: the dots sit in nested jaxprs.
        return jnp.sum(jax.checkpoint(lambda x: jnp.tanh(x @ w) @ w.T)(x))

    forward = jax.make_jaxpr(jax.jit(loss))(x, w).jaxpr
    assert bench.matmul_flops(forward) == one_pass
    # With the gradient in x and w: the forward (both dots), the checkpoint's recomputation of
    # x @ w alone (tanh needs its input; nothing needs the second dot's output), and two
    # transposed dots per dot: 1 + 1/2 + 2 passes.
    both = jax.make_jaxpr(jax.jit(jax.value_and_grad(loss, argnums=(0, 1))))(x, w).jaxpr
    assert bench.matmul_flops(both) == 3.5 * one_pass
    batched = jax.make_jaxpr(lambda a, b: jnp.einsum("bij,bjk->bik", a, b))(
        np.ones((3, 4, 5)), np.ones((3, 5, 6))
    ).jaxpr
    assert bench.matmul_flops(batched) == 2 * 3 * 4 * 5 * 6
    scanned = jax.make_jaxpr(
        lambda c: jax.lax.scan(lambda c, _: (c @ w @ w.T, None), c, length=7)[0]
    )(x).jaxpr
    assert bench.matmul_flops(scanned) == 7 * one_pass


def test_flops_per_step_counts_the_whole_step_once(components, result):
    # bench counts the matmuls of the step's jaxpr, the global step, on 8 devices here: one
    # device's share, or every device's copy, would be 8x off. In units of one full forward of
    # this 2-layer encoder: its last layer computes only the rows read, so it costs about its K
    # and V projections, 0.24 of a layer. Unprompted pass 1.24 layers, prompted pass 1.24, input
    # gradient 1.48 (layer 1's matmuls again plus twice its attention, and layer 2's K and V):
    # 3.96 layers, 1.98 forwards, plus the head's and critics' small matmuls.
    cfg = components.model.encoder_config
    d, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    forward = BATCH * SEQ_LEN * layers * (2 * (4 * d * d + 2 * d * i) + 4 * SEQ_LEN * d)
    ratio = result["flops_per_step"] / forward
    assert 1.95 < ratio < 2.4, ratio


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("TPU v4", 275.0),
        ("TPU v5 lite", 197.0),
        ("TPU v5p", 459.0),
        ("TPU v6 lite", 918.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("cpu", None),
        ("TPU v4 lite", None),
    ],
)
def test_peak_tflops_by_device_kind(kind, peak):
    assert bench.peak_tflops(kind) == peak


def test_synthetic_batch_has_the_real_layout_and_full_attention(components, batch):
    unk, mask = components.tokenizer.unk_token_id, components.tokenizer.mask_token_id
    rows = np.arange(BATCH)[:, None]
    assert batch["input_ids"].shape == (BATCH, SEQ_LEN)
    assert (batch["attention_mask"] == 1).all(), "the prompted input fills max_len"
    assert (batch["input_ids"][rows, batch["prompt_positions"]] == unk).all()
    assert (batch["input_ids"][rows[:, 0], batch["mask_position"]] == mask).all()
    assert (
        batch["unprompted_input_ids"][rows[:, 0], batch["unprompted_mask_position"]] == mask
    ).all()
    assert batch["unprompted_context_mask"].sum(axis=1).min() > SEQ_LEN // 2
    assert set(np.unique(batch["label"])) <= {0, 1}
    assert len({tuple(r) for r in batch["input_ids"]}) == BATCH, "rows differ"


def test_torch_step_at_init_matches_the_jax_step(result):
    # Both first steps start from the same params on the same batch: the task loss is the same
    # computation, so it agrees to float rounding (HF PyTorch vs Flax encoder).
    np.testing.assert_allclose(result["torch_initial_ce"], result["initial_ce"], atol=2e-5)
    # The critics draw other negatives, so the objective agrees in scale only: at init each NCE
    # term is near ln K, the loss near CE + (beta + gamma) ln K (K = 4 in the tiny config).
    expected = result["initial_ce"] + (0.1 + 0.05) * math.log(4)
    for loss in (result["initial_loss"], result["torch_initial_loss"]):
        assert math.isfinite(loss) and abs(loss - expected) < 0.05, (loss, expected)


def test_torch_step_updates_only_trainable_tensors(components, batch, trainable):
    step = torch_reference.TorchReferenceStep.from_components(components, trainable)
    encoder_before = {k: v.clone() for k, v in step.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in step.mlm_transform.items()}
    trainable_before = {k: v.detach().clone() for k, v in step.params.items()}
    assert not any(p.requires_grad for p in step.encoder.parameters())
    assert head_before, "the tiny RoBERTa has an MLM head, whose transform stays frozen"
    metrics = step.step(torch_reference.to_torch(batch))
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    for name, before in encoder_before.items():
        assert torch.equal(step.encoder.state_dict()[name], before), name
    for name, before in head_before.items():
        assert torch.equal(step.mlm_transform[name], before), name
    unchanged = [k for k, v in step.params.items() if torch.equal(v.detach(), trainable_before[k])]
    assert not unchanged, f"trainable tensors that did not move: {unchanged}"
    assert set(trainable_before) == set(trainable_lib.flatten(trainable))


def test_torch_step_reads_a_cached_unprompted_pass_as_the_pass_itself(components, batch, trainable):
    step = torch_reference.TorchReferenceStep.from_components(components, trainable)
    uncached = torch_reference.to_torch(batch)
    generator_input, z0 = step.unprompted_pass(uncached)
    cached = torch_reference.to_torch(
        {**batch, "cached_generator_input": generator_input.numpy(), "cached_z0": z0.numpy()}
    )
    assert (
        cached["cached_generator_input"].dtype == torch.float32
        and cached["input_ids"].dtype == torch.int64
    )
    with torch.no_grad():
        for name in ("logits", "ce"):
            torch.testing.assert_close(
                step.terms(cached)[name], step.terms(uncached)[name], rtol=0, atol=0
            )


def test_torch_reference_rejects_the_released_variant(components):
    import dataclasses

    released = dataclasses.replace(components.method.model, critic="scaled_dot")
    with pytest.raises(ValueError, match="critic='scaled_dot'"):
        torch_reference.check_supported(released, adapter_size=0)


def test_torch_compares_on_the_platform_jax_runs_on():
    assert bench.torch_device_for("cpu") == "cpu"
    assert bench.torch_device_for("tpu") == "cpu", "no torch TPU: the host is the comparison"
    assert bench.torch_device_for("gpu", "cpu") == "cpu", "an explicit device wins"
    if torch.cuda.is_available():
        assert bench.torch_device_for("gpu") == "cuda"
    else:  # CI's CPU-only torch: a GPU comparison must say why it cannot run, not time the CPU.
        with pytest.raises(RuntimeError, match="sees no CUDA device.*--torch_device=cpu"):
            bench.torch_device_for("gpu")


def test_torch_step_runs_where_its_device_says(components, batch, trainable):
    step = torch_reference.TorchReferenceStep.from_components(components, trainable, device="cpu")
    tensors = torch_reference.to_torch(batch, step.device)
    assert step.device == torch.device("cpu") and step.generator.device == step.device
    assert all(p.device == step.device for p in step.params.values())
    assert all(t.device == step.device for t in tensors.values())
    metrics = step.step(tensors)
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0


class _FakeDevice:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_peak_device_memory_is_the_largest_reported_peak_in_mib():
    devices = [
        _FakeDevice({"peak_bytes_in_use": 3 * 2**20, "bytes_in_use": 9 * 2**20}),
        _FakeDevice(None),  # a device without statistics (a CPU) is skipped
        _FakeDevice({"peak_bytes_in_use": 5 * 2**19}),
    ]
    assert phase_timer.peak_device_memory_mb(devices) == 3.0
    assert phase_timer.peak_device_memory_mb([_FakeDevice(None), _FakeDevice({})]) is None
    assert phase_timer.peak_device_memory_mb() is None  # this machine's CPU devices
