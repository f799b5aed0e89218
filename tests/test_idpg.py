"""Tests of IDPG's PHM generator, M-IDPG's per-layer prompts, and their config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentiment_fixture

from infoprompt_jax import config_validation
from infoprompt_jax.model import encoder as encoder_lib
from infoprompt_jax.model import idpg, models
from infoprompt_jax.model import trainable as trainable_lib
from infoprompt_jax.tools import param_counts
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import run_state


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_phm_kernel_is_the_sum_of_kronecker_products():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 4, 4)), rng.normal(size=(4, 3, 5))
    dense = sum(np.kron(a[i], b[i]) for i in range(4))
    np.testing.assert_allclose(idpg.phm_kernel(jnp.asarray(a), jnp.asarray(b)), dense, rtol=1e-5)


def test_generator_is_the_dense_bottleneck_built_with_kron():
    gen = idpg.IdpgGenerator(hidden_size=16, num_prompt_tokens=3, hidden=8, phm_n=4)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 16))
    params = gen.init(jax.random.PRNGKey(0), x)["params"]
    # Non-zero biases, so that their place in the formula is tested too.
    params = {**params, "down_bias": jnp.arange(8.0) / 8, "up_bias": jnp.arange(48.0) / 48}
    p = jax.tree.map(np.asarray, params)
    a = p["phm_a"]
    down = sum(np.kron(a[i], p["down_b"][i]) for i in range(4))
    up = sum(np.kron(a[i], p["up_b"][i]) for i in range(4))
    assert down.shape == (16, 8) and up.shape == (8, 48)
    code = np.asarray(jax.nn.gelu(np.asarray(x) @ down + p["down_bias"], approximate=False))
    expected = (code @ up + p["up_bias"]).reshape(5, 3, 16)
    got = gen.apply({"params": params}, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_layers", [1, 6])
def test_parameter_count_is_the_formula(num_layers):
    gen = idpg.IdpgGenerator(384, 5, 256, 16, num_layers=num_layers)
    shapes = jax.eval_shape(gen.init, jax.random.PRNGKey(0), jnp.zeros((1, 384)))
    # n^3 shared A_i + d m / n + m n_p d / n (the B_i) + (m + n_p d) biases per prompted layer.
    by_hand = 16**3 + 384 * 256 // 16 + 256 * 5 * 384 // 16 + num_layers * (256 + 5 * 384)
    assert _count(shapes) == idpg.generator_param_count(384, 5, 256, 16, num_layers) == by_hand


def test_minilm_shape_counts_against_infoprompts_generator():
    # The bar: MiniLM (d = 384), n_p = 5, default m and n: 40,000..48,000 against 245,760.
    assert idpg.generator_param_count(384, 5, 256, 16) == 43_136
    infoprompt = models.PromptGenerator(models.ModelConfig(2, num_prompt_tokens=5), 384)
    shapes = jax.eval_shape(infoprompt.init, jax.random.PRNGKey(0), jnp.zeros((1, 384)))
    assert _count(shapes) == 245_760


def _tiny_models(tiny_roberta_dir):
    """(S-IDPG components, M-IDPG model, a batch) on the tiny checkpoint (d = 32, 2 layers)."""
    config = sentiment_fixture.tiny_config(tiny_roberta_dir, "idpg")
    config.model.idpg_hidden, config.model.idpg_phm_n = 16, 4
    single = components_lib.build_components(config)
    config.model.idpg_layers = "all"
    multi = components_lib.build_components(config)
    batch = single.encode(sentiment_fixture.examples(4))
    return single, multi, batch


def test_multi_layer_with_pass_through_layers_is_the_single_layer_path(tiny_roberta_dir):
    single, multi, batch = _tiny_models(tiny_roberta_dir)
    params = multi.init_params(batch)
    shared = {k: v for k, v in params["prompt_generator"].items() if not k.startswith("layer_")}
    single_params = {**params, "prompt_generator": shared}
    assert set(trainable_lib.flatten(single_params)) == set(
        trainable_lib.flatten(single.init_params(batch))
    )
    z_single = single.model.apply({"params": single_params}, batch, method=_prompted_representation)
    # M-IDPG's model, its layer prompts replaced by the slots' own states (passed through): the
    # input-layer prompts are the same generator's, so every output row must be identical.
    passed = multi.model.apply(
        {"params": params}, batch, method=_prompted_representation, pass_through=True
    )
    np.testing.assert_array_equal(passed, z_single)
    # And the real layer prompts change the output.
    z_multi = multi.model.apply({"params": params}, batch, method=_prompted_representation)
    assert np.abs(np.asarray(z_multi) - np.asarray(z_single)).max() > 1e-4


def _prompted_representation(module, batch, pass_through=False):
    generator_input = module.unprompted_pass(batch)["generator_input"]
    prompts = module.prompts(batch, generator_input)
    if not pass_through:
        return module.prompted_pass(batch, prompts)
    # The single-layer path's prompted pass, with a hook that writes the slots' own states back.
    embeds = module.word_embeddings(batch["input_ids"])
    rows, positions = jnp.arange(embeds.shape[0])[:, None], batch["prompt_positions"]
    embeds = embeds.at[rows, positions].set(prompts)

    def pass_through_hook(layer, h):
        return h.at[rows, positions].set(encoder_lib.gather_rows(h, positions))

    return module._encode(
        inputs_embeds=embeds,
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        output_rows=batch["mask_position"][:, None],
        layer_hook=pass_through_hook,
    )[:, 0]


def test_multi_layer_generator_reads_the_previous_layers_first_token(tiny_roberta_dir):
    _, multi, batch = _tiny_models(tiny_roberta_dir)
    params = multi.init_params(batch)
    calls = []

    def recording(module, batch):
        writer = module._layer_prompt_writer(batch["prompt_positions"])
        h = jax.random.normal(jax.random.PRNGKey(2), batch["input_ids"].shape + (32,))
        out = writer(1, h)
        calls.append((h, out, module.prompt_generator(h[:, 0], 1)))
        return out

    multi.model.apply({"params": params}, batch, method=recording)
    h, out, expected = (np.asarray(x) for x in calls[0])
    rows = np.arange(h.shape[0])[:, None]
    positions = np.asarray(batch["prompt_positions"])
    np.testing.assert_array_equal(out[rows, positions], expected)
    untouched = np.ones(h.shape[:2], bool)
    untouched[rows, positions] = False
    np.testing.assert_array_equal(out[untouched], h[untouched])


def _validation_config(method="idpg", **model_fields):
    config = sentiment_fixture.tiny_config("unused", method)
    for field, value in model_fields.items():
        config.model[field] = value
    return config


@pytest.mark.parametrize(
    "method, fields, message",
    [
        ("infoprompt", {"idpg_layers": "all"}, "config.model.idpg_layers='all' is an IDPG option"),
        ("idpg", {"idpg_layers": "every"}, "config.model.idpg_layers='every'; choose one of"),
        ("idpg", {"idpg_hidden": 0}, "config.model.idpg_hidden=0: give an integer >= 1"),
        ("idpg", {"idpg_phm_n": 0}, "config.model.idpg_phm_n=0: give an integer >= 1"),
        ("idpg", {"idpg_hidden": 100}, "idpg_phm_n=16 does not divide config.model.idpg_hidden"),
    ],
)
def test_bad_idpg_fields_are_refused_by_name(method, fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        config_validation.validate(_validation_config(method, **fields))


def test_phm_factor_not_dividing_the_encoder_width_is_refused_before_loading(
    tiny_roberta_dir, monkeypatch
):
    config = sentiment_fixture.tiny_config(tiny_roberta_dir, "idpg")
    config.model.idpg_hidden, config.model.idpg_phm_n = 64, 64  # d = 32
    loaded = []
    monkeypatch.setattr(
        components_lib.pretrained, "load_pretrained", lambda *a, **k: loaded.append(1)
    )
    with pytest.raises(ValueError, match="idpg_phm_n=64 does not divide the encoder width d = 32"):
        components_lib.build_components(config)
    assert not loaded


@pytest.mark.parametrize(
    "method, generator, head, critics, adapters, encoder",
    [
        ("idpg", True, True, False, False, False),
        ("infoprompt", True, True, True, False, False),
        ("warp", True, True, False, False, False),
        ("adapter", False, True, False, True, False),
        ("finetune", False, True, False, False, True),
    ],
)
def test_trainable_counts_cover_every_parameter_once(
    tiny_roberta_dir, method, generator, head, critics, adapters, encoder
):
    components = components_lib.build_components(
        sentiment_fixture.tiny_config(tiny_roberta_dir, method)
    )
    params = jax.eval_shape(lambda: components.init_params(run_state.sample_batch(components)))
    trainable, frozen = trainable_lib.split_params(params, method)
    counts = trainable_lib.trainable_param_counts(trainable, frozen)
    expected = dict(
        generator=generator, head=head, critics=critics, adapters=adapters, encoder=encoder
    )
    assert {name: counts[name] > 0 for name in expected} == expected
    assert counts["trainable"] == _count(trainable) == sum(counts[name] for name in expected)
    assert counts["total"] == _count(params)
    if method == "idpg":
        assert counts["generator"] == idpg.generator_param_count(32, 2, 256, 16)
    line = trainable_lib.describe_trainable(counts)
    share = 100 * counts["trainable"] / counts["total"]
    assert line.startswith(f"trainable params: {counts['trainable']:,} || all params: ")
    assert f"trainable%: {share:.4f}" in line


def test_param_counts_table_reads_shapes_only():
    hf = {
        "model_type": "bert",
        "vocab_size": 50,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 40,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }
    table = param_counts.markdown_table(hf, has_mlm_transform=False, num_tokens=2).splitlines()
    assert len(table) == 2 + len(param_counts.ROWS)
    s_idpg = idpg.generator_param_count(32, 2, 256, 16)
    m_idpg = idpg.generator_param_count(32, 2, 256, 16, num_layers=2)
    head = 2 * 32 + 2  # class vectors and bias
    assert table[4].startswith(f"| IDPG (S-IDPG-PHM) | {s_idpg:,} | {head} | 0 | 0 | 0 |")
    assert table[5].startswith(f"| M-IDPG-PHM | {m_idpg:,} | {head} | 0 | 0 | 0 |")
