"""Parity of the Flax encoder with Hugging Face PyTorch, and checkpoint loading."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import serialization, traverse_util
from safetensors.torch import save_file

from infoprompt_jax.model import encoder as enc_lib
from infoprompt_jax.model import pretrained

PARITY_ATOL = 1e-5
TINY = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=40,
    # Larger than the 0.02 default so attention is far from uniform and a wrong mask,
    # position or transpose shows up well above the tolerance.
    initializer_range=0.3,
)
ROBERTA_TINY = dict(TINY, type_vocab_size=1)  # As roberta-base/large ship.
# Row 0 is full; row 1 has trailing padding (RoBERTa pad id 1, BERT pad id 0).
ROBERTA_IDS = np.array([[0, 5, 17, 42, 8, 99, 23, 2], [0, 64, 12, 2, 1, 1, 1, 1]])
BERT_IDS = np.array([[2, 5, 17, 42, 8, 99, 23, 3], [2, 64, 12, 3, 0, 0, 0, 0]])
MASK = np.array([[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]])
TOKEN_TYPES = np.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0, 0]])


def _save(model, path, **kwargs):
    model.save_pretrained(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny random Hugging Face checkpoints, built once: {name: (dir, torch model)}."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    torch.manual_seed(0)
    roberta = transformers.RobertaModel(transformers.RobertaConfig(**ROBERTA_TINY)).eval()
    out["roberta"] = (_save(roberta, root / "roberta"), roberta)
    bert = transformers.BertModel(transformers.BertConfig(**TINY)).eval()
    out["bert"] = (_save(bert, root / "bert"), bert)
    mlm = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**ROBERTA_TINY)).eval()
    out["roberta_mlm"] = (_save(mlm, root / "roberta_mlm"), mlm)
    bert_mlm = transformers.BertForMaskedLM(transformers.BertConfig(**TINY)).eval()
    out["bert_mlm"] = (_save(bert_mlm, root / "bert_mlm"), bert_mlm)
    return out


def _torch_hidden(model, **inputs):
    with torch.no_grad():
        out = model(**{k: torch.as_tensor(v) for k, v in inputs.items()})
    return out.last_hidden_state.numpy()


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def _check_parity(label, ckpt, ids, inputs_embeds, attention="einsum", **extra):
    path, model = ckpt
    encoder, params = pretrained.load_pretrained(path, attention=attention)
    if inputs_embeds:
        with torch.no_grad():
            embeds = model.embeddings.word_embeddings(torch.as_tensor(ids)).numpy()
        ref = _torch_hidden(model, inputs_embeds=embeds, attention_mask=MASK, **extra)
        ours = encoder.apply(
            {"params": params},
            inputs_embeds=jnp.asarray(embeds),
            attention_mask=jnp.asarray(MASK),
            **{k: jnp.asarray(v) for k, v in extra.items()},
        )
    else:
        ref = _torch_hidden(model, input_ids=ids, attention_mask=MASK, **extra)
        ours = encoder.apply(
            {"params": params},
            jnp.asarray(ids),
            jnp.asarray(MASK),
            **{k: jnp.asarray(v) for k, v in extra.items()},
        )
    diff = _max_diff(ours, ref)
    print(f"\n{label}: max abs diff vs transformers = {diff:.3g}")
    assert ours.shape == ref.shape and ours.dtype == jnp.float32
    assert diff <= PARITY_ATOL, diff
    return ours


@pytest.mark.parametrize("attention", enc_lib.ATTENTION_KINDS)
@pytest.mark.parametrize("inputs_embeds", [False, True], ids=["ids", "embeds"])
def test_roberta_parity(ckpts, inputs_embeds, attention):
    _check_parity(
        f"RoBERTa {'embeds' if inputs_embeds else 'ids'} {attention}",
        ckpts["roberta"],
        ROBERTA_IDS,
        inputs_embeds,
        attention,
    )


@pytest.mark.parametrize("inputs_embeds", [False, True], ids=["ids", "embeds"])
def test_bert_parity(ckpts, inputs_embeds):
    _check_parity(
        f"BERT {'embeds' if inputs_embeds else 'ids'}",
        ckpts["bert"],
        BERT_IDS,
        inputs_embeds,
        token_type_ids=TOKEN_TYPES,
    )


@pytest.mark.parametrize("remat", [False, True], ids=["plain", "remat"])
def test_output_rows_are_the_full_outputs_rows(ckpts, remat):
    # The last layer computed for a few rows only (the mask's and <s>'s, as the model reads
    # them) must give those rows of the full output, and the same gradients to the inputs.
    encoder, params = pretrained.load_pretrained(ckpts["roberta"][0], remat=remat)
    rows = jnp.asarray([[0, 5, 5], [3, 0, 2]])  # Row 1 includes a position next to its padding.
    embeds = params["embeddings"]["word_embeddings"]["embedding"][ROBERTA_IDS]

    def encode(embeds, output_rows=None):
        return encoder.apply(
            {"params": params}, inputs_embeds=embeds, attention_mask=MASK, output_rows=output_rows
        )

    full = encode(embeds)
    picked = encode(embeds, rows)
    assert picked.shape == (2, 3, 32)
    expected = np.take_along_axis(np.asarray(full), np.asarray(rows)[..., None], axis=1)
    np.testing.assert_allclose(picked, expected, rtol=0, atol=2e-6)
    weights = jax.random.normal(jax.random.PRNGKey(0), picked.shape)
    grad_picked = jax.grad(lambda e: jnp.sum(encode(e, rows) * weights))(embeds)
    grad_full = jax.grad(lambda e: jnp.sum(enc_lib.gather_rows(encode(e), rows) * weights))(embeds)
    scale = float(jnp.abs(grad_full).max())
    assert scale > 1.0  # The comparison is not of zeros.
    np.testing.assert_allclose(grad_picked, grad_full, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize(
    "dtype, atol", [(jnp.float32, 2e-6), (jnp.bfloat16, 0.0)], ids=["fp32", "bf16"]
)
def test_fused_attention_computes_the_einsum_attention(ckpts, dtype, atol):
    # On a CPU "fused" runs jax.nn.dot_product_attention's XLA kernel: the same products, mask
    # and fp32 softmax as the einsum path, in another order (token-major), so the outputs and
    # input gradients agree to fp32 rounding, with padding and with the last layer's
    # output_rows (which fall back to einsum).
    path = ckpts["roberta"][0]
    einsum, params = pretrained.load_pretrained(path, dtype=dtype)
    fused, fused_params = pretrained.load_pretrained(path, dtype=dtype, attention="fused")
    assert (einsum.config.attention, fused.config.attention) == ("einsum", "fused")
    jax.tree.map(np.testing.assert_array_equal, fused_params, params)
    embeds = params["embeddings"]["word_embeddings"]["embedding"][ROBERTA_IDS]
    rows = jnp.asarray([[0, 5], [3, 0]])
    for output_rows in (None, rows):

        def encode(model, e, output_rows=output_rows):
            return model.apply(
                {"params": params}, inputs_embeds=e, attention_mask=MASK, output_rows=output_rows
            ).astype(jnp.float32)

        np.testing.assert_allclose(encode(fused, embeds), encode(einsum, embeds), rtol=0, atol=atol)
        weights = jax.random.normal(jax.random.PRNGKey(1), encode(einsum, embeds).shape)
        grads = [
            jax.grad(lambda e, m=m, w=weights: jnp.sum(encode(m, e) * w))(embeds)
            for m in (fused, einsum)
        ]
        assert float(jnp.abs(grads[1]).max()) > 0.1
        np.testing.assert_allclose(
            grads[0], grads[1], rtol=0, atol=max(atol, 1e-6) * float(jnp.abs(grads[1]).max())
        )


def test_fused_attention_uses_cudnn_only_on_a_gpu_in_half_precision():
    # This suite runs on a CPU: XLA's kernel whatever the dtype. (On an H100, bf16 picks cuDNN:
    # measured in the README's GPU figures.)
    assert jax.default_backend() == "cpu"
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        assert enc_lib.fused_attention_implementation(dtype) == "xla"


def test_explicit_position_ids_from_mask(ckpts):
    # With trailing padding, `ids != pad` is the mask, so explicit mask positions on the
    # embeddings path must reproduce the `input_ids` path (which is what the prompted pass needs).
    encoder, params = pretrained.load_pretrained(ckpts["roberta"][0])
    positions = enc_lib.position_ids_from_mask(encoder.config, MASK)
    np.testing.assert_array_equal(positions[1], [2, 3, 4, 5, 1, 1, 1, 1])
    embeds = params["embeddings"]["word_embeddings"]["embedding"][ROBERTA_IDS]
    from_ids = encoder.apply({"params": params}, ROBERTA_IDS, MASK)
    from_embeds = encoder.apply(
        {"params": params}, inputs_embeds=embeds, attention_mask=MASK, position_ids=positions
    )
    np.testing.assert_allclose(from_embeds, from_ids, atol=1e-6)
    bert_config = pretrained.load_pretrained(ckpts["bert"][0])[0].config
    np.testing.assert_array_equal(
        enc_lib.position_ids_from_mask(bert_config, MASK), np.broadcast_to(np.arange(8), (2, 8))
    )


def test_param_paths_follow_hf_names(ckpts):
    _, params = pretrained.load_pretrained(ckpts["roberta"][0])
    paths = set(traverse_util.flatten_dict(params, sep="/"))
    for path in [
        "embeddings/word_embeddings/embedding",
        "embeddings/LayerNorm/scale",
        "embeddings/position_embeddings/embedding",
        "embeddings/token_type_embeddings/embedding",
        "encoder/layer/1/attention/self/query/kernel",
        "encoder/layer/0/attention/output/dense/bias",
        "encoder/layer/0/attention/output/LayerNorm/bias",
        "encoder/layer/0/intermediate/dense/kernel",
        "encoder/layer/1/output/LayerNorm/scale",
    ]:
        assert path in paths, path
    assert type(params) is dict  # A plain dict, not a FrozenDict.
    assert params["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"].shape == (32, 37)


def test_mlm_checkpoint_and_transform(ckpts):
    path, model = ckpts["roberta_mlm"]
    encoder, params = pretrained.load_pretrained(path)
    ref = _torch_hidden(model.roberta, input_ids=ROBERTA_IDS, attention_mask=MASK)
    assert _max_diff(encoder.apply({"params": params}, ROBERTA_IDS, MASK), ref) <= PARITY_ATOL
    head = pretrained.load_mlm_transform(path)
    lm_head = model.lm_head
    np.testing.assert_array_equal(head["dense"]["kernel"], lm_head.dense.weight.detach().numpy().T)
    np.testing.assert_array_equal(head["dense"]["bias"], lm_head.dense.bias.detach().numpy())
    np.testing.assert_array_equal(
        head["layer_norm"]["scale"], lm_head.layer_norm.weight.detach().numpy()
    )
    np.testing.assert_array_equal(
        head["layer_norm"]["bias"], lm_head.layer_norm.bias.detach().numpy()
    )


def test_bert_mlm_transform(ckpts):
    path, model = ckpts["bert_mlm"]
    head = pretrained.load_mlm_transform(path)
    transform = model.cls.predictions.transform
    np.testing.assert_array_equal(
        head["dense"]["kernel"], transform.dense.weight.detach().numpy().T
    )
    np.testing.assert_array_equal(
        head["layer_norm"]["scale"], transform.LayerNorm.weight.detach().numpy()
    )
    assert pretrained.load_mlm_transform(ckpts["bert"][0]) is None


def _copy_with_state(src, dst, state):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    save_file(state, str(dst / "model.safetensors"))
    return dst


def _torch_state(ckpt):
    return {k: v.detach().clone().contiguous() for k, v in ckpt[1].state_dict().items()}


def test_unexpected_key_raises(ckpts, tmp_path):
    state = _torch_state(ckpts["roberta"])
    state["encoder.layer.0.attention.self.mystery.weight"] = torch.zeros(3, 3)
    path = _copy_with_state(ckpts["roberta"][0], tmp_path / "extra", state)
    with pytest.raises(ValueError, match=r"Unexpected.*attention\.self\.mystery\.weight"):
        pretrained.load_pretrained(path)


def test_missing_key_raises(ckpts, tmp_path):
    state = _torch_state(ckpts["roberta"])
    del state["encoder.layer.1.intermediate.dense.bias"]
    path = _copy_with_state(ckpts["roberta"][0], tmp_path / "missing", state)
    with pytest.raises(ValueError, match=r"missing.*encoder/layer/1/intermediate/dense/bias"):
        pretrained.load_pretrained(path)


def test_shape_mismatch_raises(ckpts, tmp_path):
    state = _torch_state(ckpts["roberta"])
    state["encoder.layer.0.output.dense.weight"] = torch.zeros(32, 36)
    path = _copy_with_state(ckpts["roberta"][0], tmp_path / "shape", state)
    with pytest.raises(
        ValueError,
        match=r"encoder/layer/0/output/dense/kernel.*\(36, 32\).*"
        r"\(37, 32\)",
    ):
        pretrained.load_pretrained(path)


def test_missing_config_raises(ckpts, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(
        (ckpts["roberta"][0] / "model.safetensors").read_bytes()
    )
    with pytest.raises(FileNotFoundError, match="config.json"):
        pretrained.load_pretrained(tmp_path)


def test_no_weights_raises(ckpts, tmp_path):
    (tmp_path / "config.json").write_text((ckpts["roberta"][0] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors.*pytorch_model.bin"):
        pretrained.load_pretrained(tmp_path)


def test_unknown_hub_id_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants  # pylint: disable=g-import-not-at-top

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OSError, match="local directory containing config.json"):
        pretrained.load_pretrained("no-such-org/no-such-encoder-xyz")


def test_unsupported_configs_raise():
    with pytest.raises(ValueError, match="model_type 'gpt2'.*roberta.*bert"):
        pretrained.encoder_config({"model_type": "gpt2"})
    hf = dict(transformers.BertConfig(**TINY).to_dict(), hidden_act="relu")
    with pytest.raises(ValueError, match="hidden_act 'relu'"):
        pretrained.encoder_config(hf)
    hf = dict(transformers.BertConfig(**TINY).to_dict(), position_embedding_type="relative_key")
    with pytest.raises(ValueError, match="relative_key"):
        pretrained.encoder_config(hf)
    with pytest.raises(ValueError, match="attention='flash'.*einsum.*fused"):
        pretrained.encoder_config(transformers.BertConfig(**TINY).to_dict(), attention="flash")


def test_ids_xor_embeds(ckpts):
    encoder, params = pretrained.load_pretrained(ckpts["roberta"][0])
    with pytest.raises(ValueError, match="exactly one"):
        encoder.apply({"params": params})
    with pytest.raises(ValueError, match="exactly one"):
        encoder.apply({"params": params}, ROBERTA_IDS, inputs_embeds=jnp.zeros((2, 8, 32)))


def test_sharded_safetensors(ckpts, tmp_path):
    path, model = ckpts["bert"]
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ours = pretrained.load_pretrained(tmp_path)[1]
    ref = pretrained.load_pretrained(path)[1]
    jax.tree.map(np.testing.assert_array_equal, ours, ref)
    assert pretrained.weights_checksum(tmp_path) != pretrained.weights_checksum(path)


def test_pytorch_bin_and_flax_msgpack(ckpts, tmp_path):
    path, model = ckpts["roberta_mlm"]
    ref = pretrained.load_pretrained(path)[1]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((path / "config.json").read_text())
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    jax.tree.map(np.testing.assert_array_equal, pretrained.load_pretrained(bin_dir)[1], ref)
    # An old transformers Flax checkpoint: nested, task prefix, Flax layouts and names.
    msgpack_dir = tmp_path / "msgpack"
    msgpack_dir.mkdir()
    (msgpack_dir / "config.json").write_text((path / "config.json").read_text())
    tree = {
        "roberta": jax.tree.map(np.asarray, ref),
        "lm_head": pretrained.load_mlm_transform(path),
    }
    (msgpack_dir / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    jax.tree.map(np.testing.assert_array_equal, pretrained.load_pretrained(msgpack_dir)[1], ref)
    head = pretrained.load_mlm_transform(msgpack_dir)
    jax.tree.map(np.testing.assert_array_equal, head, pretrained.load_mlm_transform(path))


def test_bf16_safetensors(ckpts, tmp_path):
    state = {
        k: v.to(torch.bfloat16) if v.is_floating_point() else v
        for k, v in _torch_state(ckpts["roberta"]).items()
    }
    path = _copy_with_state(ckpts["roberta"][0], tmp_path / "bf16", state)
    params = pretrained.load_pretrained(path)[1]
    ref = pretrained.load_pretrained(ckpts["roberta"][0])[1]
    kernel = params["encoder"]["layer"]["0"]["attention"]["self"]["key"]["kernel"]
    assert kernel.dtype == jnp.float32
    np.testing.assert_array_equal(
        kernel, state["encoder.layer.0.attention.self.key.weight"].float().numpy().T
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2), params, ref)


def test_adapters_are_identity_at_init(ckpts):
    path = ckpts["roberta"][0]
    encoder, params = pretrained.load_pretrained(path)
    adapted, adapted_params = pretrained.load_pretrained(
        path, adapter_size=8, rng=jax.random.PRNGKey(3)
    )
    adapter = adapted_params["encoder"]["layer"]["1"]["output"]["adapter"]
    assert adapter["down"]["kernel"].shape == (32, 8) and adapter["up"]["kernel"].shape == (8, 32)
    assert float(jnp.std(adapter["down"]["kernel"])) > 0.005
    np.testing.assert_array_equal(adapter["up"]["kernel"], 0.0)
    # Same tree as a fresh init: the loaded params can stand in for `init`'s.
    init_params = jax.eval_shape(adapted.init, jax.random.PRNGKey(0), ROBERTA_IDS)["params"]
    assert jax.tree.structure(init_params) == jax.tree.structure(adapted_params)
    out = adapted.apply({"params": adapted_params}, ROBERTA_IDS, MASK)
    np.testing.assert_array_equal(out, encoder.apply({"params": params}, ROBERTA_IDS, MASK))


def test_remat_matches(ckpts):
    path = ckpts["bert"][0]
    encoder, params = pretrained.load_pretrained(path)
    remat, remat_params = pretrained.load_pretrained(path, remat=True)
    assert remat.config.remat
    jax.tree.map(np.testing.assert_array_equal, remat_params, params)

    def loss(p, model):
        return jnp.sum(model.apply({"params": p}, BERT_IDS, MASK, TOKEN_TYPES) ** 2)

    np.testing.assert_array_equal(
        remat.apply({"params": params}, BERT_IDS, MASK, TOKEN_TYPES),
        encoder.apply({"params": params}, BERT_IDS, MASK, TOKEN_TYPES),
    )
    grads, remat_grads = jax.grad(loss)(params, encoder), jax.grad(loss)(params, remat)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), remat_grads, grads)


def test_bf16_compute_is_close(ckpts):
    path = ckpts["roberta"][0]
    encoder, params = pretrained.load_pretrained(path)
    bf16, bf16_params = pretrained.load_pretrained(path, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16_params))
    out = bf16.apply({"params": bf16_params}, ROBERTA_IDS, MASK)
    assert out.dtype == jnp.bfloat16
    ref = encoder.apply({"params": params}, ROBERTA_IDS, MASK)
    diff = _max_diff(out, ref)
    print(f"\nbf16 vs fp32: max abs diff = {diff:.3g}")
    # bf16 keeps 8 significant bits: one ulp is 0.016 at |h| in [2, 4), and layers add a few.
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=5e-2, rtol=2e-2)


def test_init_with_inputs_embeds_has_full_tree(ckpts):
    encoder, params = pretrained.load_pretrained(ckpts["bert"][0])
    shapes = jax.eval_shape(
        encoder.init, jax.random.PRNGKey(0), inputs_embeds=jnp.zeros((1, 4, 32))
    )["params"]
    assert jax.tree.structure(shapes) == jax.tree.structure(params)


def test_weights_checksum_changes(ckpts, tmp_path):
    state = _torch_state(ckpts["bert"])
    first = _copy_with_state(ckpts["bert"][0], tmp_path / "a", state)
    assert pretrained.weights_checksum(first) == pretrained.weights_checksum(first)
    state["encoder.layer.0.output.dense.bias"][3] += 1e-3
    second = _copy_with_state(ckpts["bert"][0], tmp_path / "b", state)
    assert pretrained.weights_checksum(first) != pretrained.weights_checksum(second)
    assert len(pretrained.weights_checksum(first)) == 64


def test_config_from_hf(ckpts):
    config = json.loads((ckpts["roberta"][0] / "config.json").read_text())
    cfg = pretrained.encoder_config(config, adapter_size=4)
    assert (cfg.family, cfg.pad_token_id, cfg.type_vocab_size, cfg.adapter_size) == (
        "roberta",
        1,
        1,
        4,
    )
    assert pretrained.encoder_config(dict(config, model_type="xlm-roberta")).family == "roberta"
    bert = json.loads((ckpts["bert"][0] / "config.json").read_text())
    assert pretrained.encoder_config(bert).family == "bert"


def test_batch_sharded_on_explicit_mesh(ckpts):
    # jax.make_mesh gives explicit axes by default: gathers with batch-sharded ids must name their
    # output sharding. Both the input_ids path and the prompted path (lookup + explicit positions)
    # must give the unsharded result.
    assert jax.device_count() >= 2, "tests/conftest.py sets 8 fake CPU devices before jax loads"
    encoder, params = pretrained.load_pretrained(ckpts["roberta"][0])
    n = jax.device_count()
    ids, mask = np.resize(ROBERTA_IDS, (n, 8)), np.resize(MASK, (n, 8))
    ref = encoder.apply({"params": params}, ids, mask)

    def prompted(p, ids, mask):
        embeds = enc_lib.embedding_lookup(p["embeddings"]["word_embeddings"]["embedding"], ids)
        positions = enc_lib.position_ids_from_mask(encoder.config, mask)
        return encoder.apply(
            {"params": p}, inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        )

    mesh = jax.make_mesh((n,), ("data",))
    with jax.set_mesh(mesh):
        batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        ids_s, mask_s = jax.device_put(ids, batch), jax.device_put(mask, batch)
        from_ids = jax.jit(lambda p, i, m: encoder.apply({"params": p}, i, m))(
            params, ids_s, mask_s
        )
        from_embeds = jax.jit(prompted)(params, ids_s, mask_s)
    assert from_ids.sharding.spec[0] == "data"
    np.testing.assert_allclose(from_ids, ref, atol=1e-5)
    np.testing.assert_allclose(from_embeds, ref, atol=1e-5)
