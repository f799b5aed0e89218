"""Tests of the analysis figures: CMI of prompts, loss landscape, learning curves.

Two short runs on the tiny random RoBERTa (one epoch of the `:tiny` SST-2 config, one prompt
token) are trained once for the module: InfoPrompt, whose generator has a bias so that a test can
make it emit any prompt (the model's own forward pass then computes the losses of that prompt),
and WARP.
"""

import dataclasses
import functools
import json

import commands
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentiment_fixture

from infoprompt_jax.analysis import cmi, curves, landscape, prompt_eval, runs
from infoprompt_jax.model import losses
from infoprompt_jax.train import batching
from infoprompt_jax.train import loop as train

RTOL = 1e-5
# Every test uses batches of this many examples, so compiled functions are shared between them.
BATCH = 8


def train_run(model_dir, data_dir, workdir, method):
    config = sentiment_fixture.tiny_config(model_dir, method)
    config.data.dir = str(data_dir)
    config.train.num_epochs = 1
    config.prompt.num_tokens = 1
    config.prompt.generator_bias = True
    config.log_prompt_every = 1
    train.train_and_evaluate(config, str(workdir))
    return str(workdir)


@pytest.fixture(scope="module")
def sst2_dir(tmp_path_factory):
    return sentiment_fixture.write_sst2(tmp_path_factory.mktemp("sst2"), 16, 12)


@pytest.fixture(scope="module")
def infoprompt_run(tiny_roberta_dir, sst2_dir, tmp_path_factory):
    return train_run(
        tiny_roberta_dir, sst2_dir, tmp_path_factory.mktemp("infoprompt"), "infoprompt"
    )


@pytest.fixture(scope="module")
def warp_run(tiny_roberta_dir, sst2_dir, tmp_path_factory):
    return train_run(tiny_roberta_dir, sst2_dir, tmp_path_factory.mktemp("warp"), "warp")


@pytest.fixture(scope="module")
def restored_infoprompt(infoprompt_run):
    return runs.restore_run(infoprompt_run)


@pytest.fixture(scope="module")
def restored_warp(warp_run):
    return runs.restore_run(warp_run)


def nce_by_hand(scores_BxK):
    """InfoNCE with the positive first, in float64 numpy: logsumexp(scores) - scores[:, 0]."""
    scores = np.asarray(scores_BxK, np.float64)
    top = scores.max(axis=1)
    return top + np.log(np.exp(scores - top[:, None]).sum(axis=1)) - scores[:, 0]


@functools.partial(jax.jit, static_argnums=(0,))
def _forward(model, params, batch, rng):
    return model.apply({"params": params}, batch, rng)


def forward(model, params, batch, rng=None):
    """The model's own forward pass (`InfoPromptModel.__call__`), compiled once per model."""
    # Every leaf committed to one device, so edited param trees reuse the compiled program.
    return _forward(model, jax.device_put(params, jax.local_devices()[0]), batch, rng)


def first_rows(arrays, count):
    return {name: jnp.asarray(value[:count]) for name, value in arrays.items()}


def emitting(params, prompt_NxD):
    """The InfoPrompt params with a generator that emits `prompt_NxD` for every example."""
    generator = jax.tree.map(jnp.zeros_like, params["prompt_generator"])
    generator["up_bias"] = jnp.asarray(prompt_NxD, jnp.float32)
    return {**params, "prompt_generator": generator}


# CMI.


def test_cmi_from_scores_is_log_k_minus_info_nce_by_hand():
    scores = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32) * 3
    by_hand = np.log(7) - nce_by_hand(scores)
    estimate = np.asarray(cmi.cmi_from_scores(jnp.asarray(scores)))
    np.testing.assert_allclose(estimate, by_hand, rtol=RTOL, atol=1e-6)
    assert np.all(estimate <= np.log(7))


def test_restore_gives_the_trained_prompts(
    restored_infoprompt, restored_warp, infoprompt_run, warp_run
):
    # Training logged the prompt of train example 0 after each step; the last one is the
    # checkpoint's, so the restored model must produce it again.
    for (components, params), workdir in (
        (restored_infoprompt, infoprompt_run),
        (restored_warp, warp_run),
    ):
        steps, prompts = landscape.load_trajectory(workdir)
        assert list(steps) == [0, 1, 2]
        assert not np.allclose(prompts[0], prompts[-1]), "training moved the prompt"
        arrays = runs.encode_examples(components, "train")
        own = prompt_eval.own_prompts_fn(components.model, params, first_rows(arrays, BATCH))
        np.testing.assert_allclose(own[0], prompts[-1], rtol=RTOL, atol=1e-7)


def test_cmi_equals_log_k_minus_the_models_own_nce(restored_infoprompt):
    components, params = restored_infoprompt
    model, k = components.model, components.method.model.num_candidates
    dev = runs.encode_examples(components, "dev")
    count = len(dev["label"])
    assert BATCH < count < 2 * BATCH, "two batches, the second one padded"
    padded, _ = batching.pad_to_multiple(dev, BATCH)
    rng = jax.random.PRNGKey(3)
    critic_key = jax.random.split(rng, 3)[2]  # What InfoPromptModel.__call__ gives the critic.
    fixed = jnp.linspace(-0.1, 0.1, model.encoder_config.hidden_size)[None]
    for own_params, prompt in ((params, None), (emitting(params, fixed), fixed)):
        estimate = cmi.estimate_cmi(model, params, dev, critic_key, BATCH, prompt_NxD=prompt)
        assert estimate.shape == (count,)
        for index in range(2):
            batch = {n: v[index * BATCH : (index + 1) * BATCH] for n, v in padded.items()}
            nce = forward(model, own_params, batch, rng)["nce_rep"]
            scores = np.asarray(cmi.batch_scores(model, params, batch, critic_key, prompt))
            by_hand = np.log(k) - nce_by_hand(scores)
            np.testing.assert_allclose(by_hand, np.log(k) - np.asarray(nce), rtol=RTOL, atol=1e-6)
            # The estimate's batch i draws with fold_in(key, i).
            scores = cmi.batch_scores(
                model, params, batch, jax.random.fold_in(critic_key, index), prompt
            )
            np.testing.assert_allclose(
                estimate[index * BATCH : (index + 1) * BATCH],
                (np.log(k) - nce_by_hand(scores))[: count - index * BATCH],
                rtol=RTOL,
                atol=1e-6,
            )


def test_random_and_phrase_prompts(restored_infoprompt):
    table = np.random.default_rng(1).normal(2.0, [0.5, 1.0, 3.0], size=(500, 3))
    draws = cmi.random_prompt(table, 4000, seed=0)
    np.testing.assert_allclose(draws.mean(0), table.mean(0), atol=0.15)
    np.testing.assert_allclose(draws.std(0), table.std(0), rtol=0.05)
    assert not np.allclose(cmi.random_prompt(table, 2, 0), cmi.random_prompt(table, 2, 1))
    components, params = restored_infoprompt
    words = runs.word_embedding_table(params)
    ids = components.tokenizer("it is great", add_special_tokens=False)["input_ids"]
    cycled = cmi.phrase_prompt(components.tokenizer, words, "it is great", len(ids) + 2)
    np.testing.assert_array_equal(cycled, words[ids + ids[:2]])
    np.testing.assert_array_equal(
        cmi.phrase_prompt(components.tokenizer, words, "it is great", 1), words[ids[:1]]
    )


def test_cmi_command_writes_csv_plot_and_medians(
    infoprompt_run, restored_infoprompt, tmp_path, capsys
):
    commands.run_in_process(
        cmi,
        [
            f"--workdirs={infoprompt_run}",
            "--labels=a",
            f"--output={tmp_path}",
            "--num_random=2",
            "--phrases=it is great;the film",
            "--max_examples=6",
            f"--batch_size={BATCH}",
        ],
    )
    table = cmi.read_csv(tmp_path / "cmi.csv")
    sources = [
        "learned: a",
        "random #0",
        "random #1",
        'phrase: "it is great"',
        'phrase: "the film"',
    ]
    assert list(table) == [(s, e) for s in sources for e in ("trained", "held_out")]
    for (_, estimator), result in table.items():
        assert result.values.shape == (6,)
        # trained: K = 4 of the :tiny config; held_out: K_eval = min(256, 6 dev examples).
        assert result.cap == pytest.approx(np.log(4 if estimator == "trained" else 6))
        assert np.all(result.values <= result.cap + 1e-6)
    assert not np.allclose(
        table["random #0", "trained"].values, table["random #1", "trained"].values
    )
    # One prompt for every example carries nothing about any of them: the held-out bound is at
    # most 0 (the mean of s_i - logsumexp_j s_j + log K, by Jensen), whatever the critic.
    for source in sources[1:]:
        assert table[source, "held_out"].values.mean() <= 1e-6
    # The key is fixed (--seed=0): the same numbers again, from the module's restored run.
    components, params = restored_infoprompt
    dev = runs.encode_examples(components, "dev", max_examples=6)
    words = runs.word_embedding_table(params)
    again = {
        "learned: a": None,
        "random #1": cmi.random_prompt(words, 1, seed=1),
        'phrase: "the film"': cmi.phrase_prompt(components.tokenizer, words, "the film", 1),
    }
    for source, prompt in again.items():
        estimate = cmi.estimate_cmi(
            components.model, params, dev, jax.random.PRNGKey(0), BATCH, prompt
        )
        np.testing.assert_allclose(
            table[source, "trained"].values, estimate, rtol=1e-5, atol=1e-6, err_msg=source
        )
    assert (tmp_path / "cmi.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    median = np.median(table["learned: a", "trained"].values)
    assert f"learned: a [trained]: median {median:.4f} nats, cap {np.log(4):.4f}" in printed


def test_run_labels():
    config = sentiment_fixture.tiny_config("unused")
    assert runs.default_label(config) == "infoprompt beta=0.1 gamma=0.05"
    config.variant = "released"
    assert runs.default_label(config) == "infoprompt beta=0.1 gamma=0.05 (released)"
    assert runs.default_label(sentiment_fixture.tiny_config("unused", "warp")) == "warp"
    assert runs.unique_labels(["a", "a", "b"], ["x/s0", "x/s1", "y"]) == ["a [s0]", "a [s1]", "b"]
    assert runs.unique_labels(["a", "a"], ["x/s0", "y/s0"]) == ["a [s0] #0", "a [s0] #1"]


def test_cmi_needs_a_critic_in_the_first_run_and_gives_others_the_held_out_estimate_only(
    infoprompt_run, warp_run
):
    with pytest.raises(ValueError, match="representation critic"):
        cmi.compute([warp_run, infoprompt_run])
    results = cmi.compute(
        [infoprompt_run, warp_run], labels=["ip", "warp"], max_examples=6, batch_size=BATCH
    )
    assert list(results)[:3] == [
        ("learned: ip", "trained"),
        ("learned: ip", "held_out"),
        ("learned: warp", "held_out"),
    ]


# Loss landscape.


def test_principal_directions_are_orthonormal_and_numpys_svd_directions():
    rng = np.random.default_rng(0)
    table = (
        rng.normal(size=(300, 6))
        * [5.0, 3.0, 1.0, 0.5, 0.2, 0.1]
        @ np.linalg.qr(rng.normal(size=(6, 6)))[0]
        + 4.0
    )
    plane = landscape.principal_directions(table)
    np.testing.assert_allclose(plane.pcs_2xD @ plane.pcs_2xD.T, np.eye(2), atol=1e-5)
    _, singular, vt = np.linalg.svd(table - table.mean(0), full_matrices=False)
    for pc, reference in zip(plane.pcs_2xD, vt[:2]):
        np.testing.assert_allclose(np.abs(pc @ reference), 1.0, atol=1e-5)
        np.testing.assert_allclose(pc, reference * np.sign(pc @ reference), atol=1e-5)
    np.testing.assert_allclose(plane.mean_D, table.mean(0), rtol=1e-5)
    np.testing.assert_allclose(plane.stddevs_2, singular[:2] / np.sqrt(299), rtol=1e-4)
    coords = np.array([[0.3, -1.2]])
    np.testing.assert_allclose(
        landscape.project(landscape.plane_points(coords, plane), plane), coords, atol=1e-5
    )


def test_landscape_task_loss_at_the_warp_prompt_equals_the_models_loss(restored_warp):
    components, params = restored_warp
    arrays = landscape.sample_examples(components, BATCH, seed=0)
    plane = landscape.principal_directions(runs.word_embedding_table(params))
    learned = landscape.project(np.asarray(params["prompt"]), plane)[0]
    points = np.stack([learned, [0.0, 0.0], learned + [0.02, -0.03]])
    values = landscape.evaluate_points(
        components.model, params, arrays, plane, points, jax.random.PRNGKey(0), points_per_batch=2
    )
    assert set(values) == {"task_loss"}, "WARP has no representation critic"
    batch = first_rows(arrays, BATCH)
    for point, value in zip(points, values["task_loss"]):
        prompt = landscape.plane_points(point[None], plane)  # [n_p = 1, D]
        logits = forward(components.model, {**params, "prompt": jnp.asarray(prompt)}, batch)[
            "logits"
        ]
        direct = np.mean(losses.cross_entropy(logits, batch["label"]))
        np.testing.assert_allclose(value, direct, rtol=RTOL)


def test_landscape_losses_equal_the_models_forward_pass(restored_infoprompt):
    components, params = restored_infoprompt
    arrays = landscape.sample_examples(components, BATCH, seed=0)
    plane = landscape.principal_directions(runs.word_embedding_table(params))
    rng = jax.random.PRNGKey(5)
    points = np.array([[0.01, 0.02], [-0.03, 0.0]])
    values = landscape.evaluate_points(
        components.model, params, arrays, plane, points, jax.random.split(rng, 3)[2]
    )
    batch = first_rows(arrays, BATCH)
    for index, point in enumerate(points):
        prompt = landscape.plane_points(point[None], plane)
        terms = forward(components.model, emitting(params, prompt), batch, rng)
        np.testing.assert_allclose(values["task_loss"][index], np.mean(terms["ce"]), rtol=RTOL)
        np.testing.assert_allclose(
            values["representation_loss"][index], np.mean(terms["nce_rep"]), rtol=RTOL
        )


def test_landscape_command(infoprompt_run, restored_infoprompt, tmp_path, capsys):
    result = commands.run_in_process(
        landscape,
        [
            f"--workdir={infoprompt_run}",
            f"--output={tmp_path}",
            "--grid_size=4",
            f"--num_examples={BATCH}",
        ],
    )
    for name in ("task_loss.png", "representation_loss.png", "landscape.npz"):
        assert (tmp_path / name).stat().st_size > 1000, name
    saved = dict(np.load(tmp_path / "landscape.npz"))
    assert saved["task_loss"].shape == saved["representation_loss"].shape == (4, 4)
    np.testing.assert_allclose(saved["pcs"] @ saved["pcs"].T, np.eye(2), atol=1e-5)
    radius = float(saved["radius"])
    np.testing.assert_allclose(saved["a"], np.linspace(-radius, radius, 4), rtol=1e-6)
    assert np.all(np.abs(saved["trajectory"]) <= radius), "the grid holds the trajectory"
    steps, prompts = landscape.load_trajectory(infoprompt_run)
    plane = landscape.Plane(saved["mean"], saved["pcs"], saved["stddevs"])
    np.testing.assert_allclose(
        saved["trajectory"], landscape.project(prompts[:, 0], plane), rtol=1e-5, atol=1e-7
    )
    # Grid values: loss[i, j] is at (a[j], b[i]).
    components, params = restored_infoprompt
    arrays = landscape.sample_examples(components, BATCH, seed=0)
    points = np.array([[saved["a"][1], saved["b"][2]], [saved["a"][3], saved["b"][0]]])
    values = landscape.evaluate_points(
        components.model, params, arrays, plane, points, jax.random.PRNGKey(0)
    )
    for name in ("task_loss", "representation_loss"):
        np.testing.assert_allclose([saved[name][2, 1], saved[name][0, 3]], values[name], rtol=RTOL)
        np.testing.assert_array_equal(result[name], saved[name])
        assert float(saved[f"{name}_roughness"]) == landscape.roughness(saved[name])
    out = capsys.readouterr().out
    assert "landscape.npz" in out and "task_loss: min" in out and "roughness" in out


def test_roughness_by_hand():
    a = np.arange(5.0)
    assert landscape.roughness(a[:, None] * 2 + a[None, :]) == 0.0  # A plane.
    bowl = a[:, None] ** 2 + a[None, :] ** 2  # Laplacian 4 everywhere, range 32.
    assert landscape.roughness(bowl) == 4 / 32
    # Scale-free: the same shape at 100 times the loss scale is exactly as rough.
    assert landscape.roughness(100 * bowl + 7) == landscape.roughness(bowl)
    checkers = np.indices((5, 5)).sum(axis=0) % 2.0  # Every interior |Laplacian| is 4, range 1.
    assert landscape.roughness(checkers) == 4.0
    assert landscape.roughness(np.ones((3, 3))) == 0.0


def test_landscape_needs_one_prompt_token(tmp_path):
    config = sentiment_fixture.tiny_config("unused")  # two prompt tokens
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    with pytest.raises(ValueError, match="one prompt token"):
        commands.run_in_process(
            landscape, [f"--workdir={tmp_path}", f"--output={tmp_path / 'out'}"]
        )


# Learning curves.


def test_aggregate_mean_and_bands_on_fabricated_numbers():
    runs_ = [
        curves.Curve(np.array([10, 20, 30]), np.array([0.5, 0.6, 0.7])),
        curves.Curve(np.array([10, 20, 30, 40]), np.array([0.3, 0.8, 0.9, 1.0])),
        curves.Curve(np.array([5, 10, 20, 30]), np.array([0.0, 0.4, 0.7, 0.2])),
    ]
    minmax = curves.aggregate(runs_)
    np.testing.assert_array_equal(minmax.steps, [10, 20, 30])
    np.testing.assert_allclose(minmax.mean, [0.4, 0.7, 0.6])
    np.testing.assert_allclose(minmax.low, [0.3, 0.6, 0.2])
    np.testing.assert_allclose(minmax.high, [0.5, 0.8, 0.9])
    assert minmax.num_runs == 3
    std = curves.aggregate(runs_, band="std")
    sd = np.sqrt([(0.01 + 0.01 + 0) / 3, (0.01 + 0.01 + 0) / 3, (0.01 + 0.09 + 0.16) / 3])
    np.testing.assert_allclose(std.low, std.mean - sd)
    np.testing.assert_allclose(std.high, std.mean + sd)
    single = curves.aggregate(runs_[:1])
    np.testing.assert_array_equal(single.low, single.high)


def fabricated_run(directory, method, beta, evals, train_losses):
    config = sentiment_fixture.tiny_config("unused", method)
    config.loss.beta = beta
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(config.to_json_best_effort())
    records = [{"step": s, "train_loss": v, "train_accuracy": 0.5} for s, v in train_losses]
    records += [{"step": s, "epoch": e, "eval_accuracy": v} for e, (s, v) in enumerate(evals, 1)]
    records.sort(key=lambda r: r["step"])
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(directory)


def test_curves_command_groups_runs_by_config_label(tmp_path, capsys):
    seed0 = fabricated_run(
        tmp_path / "ip0", "infoprompt", 0.1, [(2, 0.5), (4, 0.75)], [(1, 0.9), (2, 0.8)]
    )
    seed1 = fabricated_run(
        tmp_path / "ip1", "infoprompt", 0.1, [(2, 0.7), (4, 0.85)], [(1, 0.7), (2, 0.6)]
    )
    warp = fabricated_run(tmp_path / "warp", "warp", 0.1, [(2, 0.6), (4, 0.65)], [(1, 1.0)])
    output = tmp_path / "plots" / "curves.png"
    aggregates = commands.run_in_process(
        curves,
        [f"--workdirs={seed0},{seed1},{warp}", "--metric=eval_accuracy", f"--output={output}"],
    )
    assert list(aggregates) == ["infoprompt beta=0.1 gamma=0.05", "warp"]
    infoprompt = aggregates["infoprompt beta=0.1 gamma=0.05"]
    np.testing.assert_array_equal(infoprompt.steps, [2, 4])
    np.testing.assert_allclose(infoprompt.mean, [0.6, 0.8])
    np.testing.assert_allclose(infoprompt.low, [0.5, 0.75])
    np.testing.assert_allclose(infoprompt.high, [0.7, 0.85])
    np.testing.assert_allclose(aggregates["warp"].mean, [0.6, 0.65])
    assert output.stat().st_size > 1000
    assert "final eval_accuracy 0.8000 at step 4" in capsys.readouterr().out
    # Explicit labels regroup; the train metric is read from the train lines.
    by_label = commands.run_in_process(
        curves,
        [
            f"--workdirs={seed0},{seed1},{warp}",
            "--metric=train_loss",
            "--labels=x,y,x",
            "--band=std",
            f"--output={output}",
        ],
    )
    np.testing.assert_allclose(by_label["x"].mean, [0.95])
    np.testing.assert_allclose(by_label["y"].mean, [0.7, 0.6])
    with pytest.raises(ValueError, match="eval_accuracy"):
        commands.run_in_process(
            curves, [f"--workdirs={seed0}", "--metric=eval_f1", f"--output={output}"]
        )


def test_the_held_out_fit_draws_from_the_whole_train_split(restored_infoprompt):
    components, _ = restored_infoprompt
    few_shot = components.config.copy_and_resolve_references()
    few_shot.data.few_shot = 4  # The run's own subset: 4 examples of the 16.
    subset = runs.encode_examples(dataclasses.replace(components, config=few_shot), "train")
    assert len(subset["label"]) == 4
    drawn = runs.encode_split_sample(
        dataclasses.replace(components, config=few_shot), "train", 10, 1
    )
    again = runs.encode_split_sample(
        dataclasses.replace(components, config=few_shot), "train", 10, 1
    )
    other = runs.encode_split_sample(
        dataclasses.replace(components, config=few_shot), "train", 10, 2
    )
    assert len(drawn["label"]) == 10
    np.testing.assert_array_equal(drawn["input_ids"], again["input_ids"])
    assert not np.array_equal(drawn["input_ids"], other["input_ids"])
    whole = runs.encode_split_sample(components, "train", 100)  # More than the split's 16.
    assert len(whole["label"]) == 16


def test_cmi_refuses_a_negative_fit_count(infoprompt_run, tmp_path):
    with pytest.raises(ValueError, match="--fit_examples=-1; give a count"):
        commands.run_in_process(
            cmi, [f"--workdirs={infoprompt_run}", f"--output={tmp_path}", "--fit_examples=-1"]
        )


def test_pairs_in_length_buckets_equal_the_pairs_at_max_len(restored_infoprompt, monkeypatch):
    components, params = restored_infoprompt
    widths = []  # The padded length of every batch the pairs pass sees.
    pairs_fn = cmi._pairs_fn
    monkeypatch.setattr(
        cmi,
        "_pairs_fn",
        lambda model, params, batch, prompts: (
            widths.append(batch["input_ids"].shape[1]) or pairs_fn(model, params, batch, prompts)
        ),
    )
    arrays = runs.encode_examples(components, "train")
    lengths = batching.bucket_lengths(components.config.max_len, (16, 24))
    # Every batch is cut: no row reaches the longest bucket below max_len.
    assert batching.row_lengths(arrays).max() <= 24 < components.config.max_len
    random_prompt = cmi.random_prompt(runs.word_embedding_table(params), 1, seed=0)
    for prompt in (None, random_prompt):  # The run's own prompts, then a fixed one.
        widths.clear()
        full = cmi.prompt_representation_pairs(components.model, params, arrays, BATCH, prompt)
        assert set(widths) == {components.config.max_len}
        widths.clear()
        cut = cmi.prompt_representation_pairs(
            components.model, params, arrays, BATCH, prompt, lengths
        )
        assert set(widths) <= {16, 24} and widths
        for at_max_len, bucketed in zip(full, cut):
            assert bucketed.shape == at_max_len.shape == (len(arrays["label"]), at_max_len.shape[1])
            np.testing.assert_allclose(bucketed, at_max_len, rtol=RTOL, atol=1e-5)
