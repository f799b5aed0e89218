"""MPNet: parity with Hugging Face PyTorch, its relative buckets, and every method's step on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentiment_fixture
import torch
import transformers
from test_steps import METHOD_TRAINABLE, build, host_copy, run

from infoprompt_jax.model import encoder as enc_lib
from infoprompt_jax.model import model_init, mpnet, pretrained
from infoprompt_jax.model import trainable as trainable_lib
from infoprompt_jax.tools import bench, torch_reference
from infoprompt_jax.train import components as components_lib

PARITY_ATOL = 1e-5
# Longer than 128 tokens, so the log-spaced buckets and the clamp at max_distance all occur.
LENGTH = 160
TINY = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=LENGTH + 2,
    # Large weights, so attention is far from uniform and a wrong bucket, position or mask shows.
    initializer_range=0.3,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random MPNetModel saved by Hugging Face, and the torch model itself."""
    torch.manual_seed(0)
    model = transformers.MPNetModel(transformers.MPNetConfig(**TINY)).eval()
    with torch.no_grad():  # Biases of a size that moves attention: a wrong bucket is visible.
        model.encoder.relative_attention_bias.weight.normal_(0.0, 2.0)
    path = tmp_path_factory.mktemp("mpnet")
    model.save_pretrained(path)
    return path, model


def _batch():
    """Two rows: one full, one with trailing padding (MPNet's pad id is 1)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(5, TINY["vocab_size"], (2, LENGTH))
    ids[:, 0] = 0
    mask = np.ones((2, LENGTH), np.int64)
    mask[1, 100:] = 0
    ids[1, 100:] = 1
    return ids, mask


def _torch_hidden(model, **inputs):
    with torch.no_grad():
        out = model(**{k: torch.as_tensor(v) for k, v in inputs.items()})
    return out.last_hidden_state.numpy()


@pytest.mark.parametrize("attention", enc_lib.ATTENTION_KINDS)
@pytest.mark.parametrize("inputs_embeds", [False, True], ids=["ids", "embeds"])
def test_parity_with_hugging_face(checkpoint, inputs_embeds, attention):
    path, model = checkpoint
    encoder, params = pretrained.load_pretrained(path, attention=attention)
    assert isinstance(encoder, mpnet.MPNetEncoder) and encoder.config.type_vocab_size == 0
    ids, mask = _batch()
    if inputs_embeds:
        embeds = model.embeddings.word_embeddings(torch.as_tensor(ids)).detach().numpy()
        ref = _torch_hidden(model, inputs_embeds=embeds, attention_mask=mask)
        ours = encoder.apply({"params": params}, inputs_embeds=embeds, attention_mask=mask)
    else:
        ref = _torch_hidden(model, input_ids=ids, attention_mask=mask)
        ours = encoder.apply({"params": params}, ids, mask)
    diff = float(np.max(np.abs(np.asarray(ours) - ref)))
    print(f"\nMPNet {'embeds' if inputs_embeds else 'ids'} {attention}: max abs diff {diff:.3g}")
    assert ours.shape == ref.shape == (2, LENGTH, 32)
    assert diff <= PARITY_ATOL, diff
    # The relative bias carries weight here: without it the outputs move far past the tolerance.
    table = params["encoder"]["relative_attention_bias"]["embedding"]
    unbiased = jax.tree.map(lambda x: x, params)
    unbiased["encoder"]["relative_attention_bias"]["embedding"] = jnp.zeros_like(table)
    assert float(jnp.abs(encoder.apply({"params": unbiased}, ids, mask) - ours).max()) > 0.1


def test_buckets_are_hugging_faces_for_every_distance():
    distances = torch.arange(-700, 701)
    expected = transformers.models.mpnet.modeling_mpnet.MPNetEncoder.relative_position_bucket(
        distances
    ).numpy()
    buckets = mpnet.relative_position_buckets(701)  # [i, j] holds the distance j - i.
    ours = np.concatenate([buckets[700, :700], buckets[0]])  # -700 .. -1, then 0 .. 700.
    np.testing.assert_array_equal(ours, expected)
    # Every bucket occurs but 16, "distance 0 seen from the other side".
    assert set(np.unique(ours)) == set(range(32)) - {16}


def test_output_rows_take_the_bias_rows_of_their_queries(checkpoint):
    encoder, params = pretrained.load_pretrained(checkpoint[0])
    ids, mask = _batch()
    embeds = params["embeddings"]["word_embeddings"]["embedding"][ids]
    rows = jnp.asarray([[0, 150, 7], [99, 0, 42]])

    @jax.jit
    def encode(embeds, output_rows=None):
        return encoder.apply(
            {"params": params}, inputs_embeds=embeds, attention_mask=mask, output_rows=output_rows
        )

    picked = encode(embeds, rows)
    expected = enc_lib.gather_rows(encode(embeds), rows)
    np.testing.assert_allclose(picked, expected, rtol=0, atol=2e-6)
    weights = jax.random.normal(jax.random.PRNGKey(0), picked.shape)
    grad_picked = jax.grad(lambda e: jnp.sum(encode(e, rows) * weights))(embeds)
    grad_full = jax.grad(lambda e: jnp.sum(enc_lib.gather_rows(encode(e), rows) * weights))(embeds)
    scale = float(jnp.abs(grad_full).max())
    assert scale > 0.1
    np.testing.assert_allclose(grad_picked, grad_full, rtol=0, atol=1e-5 * scale)


def test_masked_lm_checkpoint_loads_with_its_transform(tmp_path):
    torch.manual_seed(1)
    model = transformers.MPNetForMaskedLM(transformers.MPNetConfig(**TINY)).eval()
    model.save_pretrained(tmp_path)
    ids, mask = _batch()
    encoder, params = pretrained.load_pretrained(tmp_path)
    ref = _torch_hidden(model.mpnet, input_ids=ids, attention_mask=mask)
    np.testing.assert_allclose(encoder.apply({"params": params}, ids, mask), ref, atol=PARITY_ATOL)
    head = pretrained.load_mlm_transform(tmp_path)
    np.testing.assert_array_equal(
        head["dense"]["kernel"], model.lm_head.dense.weight.detach().numpy().T
    )


def test_configs_hugging_face_would_not_compute_the_same_way_are_refused():
    hf = transformers.MPNetConfig(**TINY).to_dict()
    with pytest.raises(ValueError, match="relative_attention_num_buckets=16.*fixes them at 32"):
        pretrained.encoder_config(dict(hf, relative_attention_num_buckets=16))
    with pytest.raises(ValueError, match="pad_token_id=0.*1"):
        pretrained.encoder_config(dict(hf, pad_token_id=0))


def test_tokenizer_larger_than_the_checkpoints_vocabulary_is_refused(tiny_mpnet_dir, tmp_path):
    model_dir = tmp_path / "mismatch"
    model_dir.mkdir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).write_bytes((tiny_mpnet_dir / name).read_bytes())
    torch.manual_seed(0)
    small = transformers.MPNetConfig(**dict(TINY, vocab_size=20))
    transformers.MPNetModel(small).save_pretrained(model_dir)
    config = sentiment_fixture.tiny_config(model_dir)
    with pytest.raises(ValueError, match=r"tokenizer in .*mismatch has \d+ tokens.*vocab_size=20"):
        components_lib.build_components(config)


@pytest.fixture(scope="module")
def components(tiny_mpnet_dir):
    return components_lib.build_components(sentiment_fixture.tiny_config(tiny_mpnet_dir))


def test_template_and_verbalizer_head_come_from_the_mpnet_vocabulary(components):
    tokenizer = components.tokenizer
    assert not components.template_tokenizer.use_token_types, "MPNet has no token types"
    assert components.mlm_transform is None and not components.method.model.has_mlm_transform
    arrays = components.encode(sentiment_fixture.examples(2))
    first = tokenizer.convert_ids_to_tokens(arrays["unprompted_input_ids"][1])
    assert first[0] == "<s>" and "<mask>" in first and "great" in first and "</s>" in first
    assert arrays["input_ids"][0, arrays["mask_position"][0]] == tokenizer.mask_token_id
    params = components.init_params(bench.synthetic_batch(components, 2))
    table = np.asarray(params["encoder"]["embeddings"]["word_embeddings"]["embedding"])
    class_vectors = np.asarray(params["task_head"]["class_vectors"])
    for row, ids in zip(class_vectors, components.verbalizer_ids):
        np.testing.assert_array_equal(row, table[ids].mean(axis=0))
    assert len(components.verbalizer_ids) == 2
    np.testing.assert_array_equal(
        class_vectors,
        model_init.class_vectors_from_verbalizers(params["encoder"], components.verbalizer_ids),
    )


def test_prompted_logits_match_hugging_face_with_the_prompts_in_place(components):
    # The torch reference writes the generated prompts into the embeddings at the prompt slots
    # and runs Hugging Face's MPNetModel on them: its relative buckets come from the slots'
    # places in that sequence, so equal logits say ours do too.
    batch = bench.synthetic_batch(components, 4)
    shapes = jax.eval_shape(components.init_params, batch)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.5, s.shape).astype(np.float32), shapes)
    params["encoder"] = components.encoder_params
    trainable = trainable_lib.split_params(params, components.method.name)[0]
    step = torch_reference.TorchReferenceStep.from_components(components, trainable)
    with torch.no_grad():
        ref = step.terms(torch_reference.to_torch(batch))["logits"].numpy()
    ours = jax.jit(components.model.apply)({"params": params}, batch)["logits"]
    assert float(np.abs(ref).max()) > 0.1
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", sorted(METHOD_TRAINABLE))
def test_each_method_trains_its_parameters_on_mpnet(tiny_mpnet_dir, method):
    state, frozen, train_fn, _, batch = build(tiny_mpnet_dir, method)
    assert set(state.trainable) == METHOD_TRAINABLE[method]
    before, frozen_before = host_copy(state.trainable), host_copy(frozen)
    state, history = run(state, frozen, train_fn, batch, 3)  # Adapters' `down` moves at step 2.
    assert all(np.isfinite(m["loss"]) for m in history)
    for path, value in trainable_lib.flatten(frozen_before).items():
        np.testing.assert_array_equal(trainable_lib.flatten(frozen)[path], value, err_msg=path)
    after = trainable_lib.flatten(host_copy(state.trainable))
    unchanged = [p for p, v in trainable_lib.flatten(before).items() if np.array_equal(after[p], v)]
    assert not unchanged, f"{method}: trainable leaves that did not move: {unchanged}"


def test_sharded_step_equals_the_single_device_step_on_mpnet(tiny_mpnet_dir):
    single = build(tiny_mpnet_dir)
    sharded = build(tiny_mpnet_dir, devices=jax.devices(), fsdp=2)
    state_1, history_1 = run(single.state, single.frozen, single.train_fn, single.batch, 2)
    state_8, history_8 = run(sharded.state, sharded.frozen, sharded.train_fn, sharded.batch, 2)
    for m1, m8 in zip(history_1, history_8):
        for name in m1:
            np.testing.assert_allclose(m8[name], m1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        host_copy(state_8.trainable),
        host_copy(state_1.trainable),
    )


# Loss after 30 steps (lr 1e-2) of the tiny sentiment task on the tiny MPNet at seed 0 (CPU,
# float32). Its tokenizer is built in code, so one value holds everywhere.
GOLDEN_FINAL_LOSS = 0.6066


def test_loss_falls_to_the_golden_value_on_mpnet_and_bf16_follows(tiny_mpnet_dir):
    state, frozen, train_fn, _, batch = build(tiny_mpnet_dir, optim__lr=1e-2)
    _, history = run(state, frozen, train_fn, batch, 30)
    losses = [float(m["loss"]) for m in history]
    print("MPNet loss trajectory:", [round(x, 4) for x in losses])
    assert losses[-1] < 0.75 * losses[0], f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    np.testing.assert_allclose(losses[-1], GOLDEN_FINAL_LOSS, rtol=2e-3)
    bf16 = build(tiny_mpnet_dir, optim__lr=1e-2, model__dtype="bfloat16")
    _, bf16_history = run(bf16.state, bf16.frozen, bf16.train_fn, bf16.batch, 10)
    bf16_losses = [float(m["loss"]) for m in bf16_history]
    print("MPNet bf16 loss trajectory:", [round(x, 4) for x in bf16_losses])
    assert bf16_losses != losses[:10], "the bf16 run computes in bf16"
    np.testing.assert_allclose(bf16_losses, losses[:10], rtol=1e-2)
