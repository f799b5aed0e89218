import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import commands  # noqa: E402 (our helpers; no jax: XLA_FLAGS must be set before jax loads)

os.environ.setdefault("XLA_FLAGS", commands.xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402


def pytest_configure(config):
    """One persistent compilation cache for the session: every process and child of it.

    Many tests train the same tiny programs (a second seed, a resumed run, the same run from
    main.py in a child): each loads them from the cache instead of compiling again. The cache is
    fresh per session, so no result depends on an earlier run, and it never touches the user's
    ~/.cache. pytest-xdist workers inherit the directory from the controlling process, which
    made it and removes it. A test of the cache itself passes its own directory.
    """
    from infoprompt_jax import compile_cache

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        config.compile_cache_dir = tempfile.mkdtemp(prefix="infoprompt_jax_test_cache_")
        os.environ[compile_cache.ENV_VAR] = config.compile_cache_dir
    compile_cache.enable(os.environ[compile_cache.ENV_VAR])


def pytest_unconfigure(config):
    if hasattr(config, "compile_cache_dir"):
        shutil.rmtree(config.compile_cache_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny random RobertaForMaskedLM checkpoint with a RoBERTa tokenizer (built once)."""
    import tiny_models

    return tiny_models.make_tiny_roberta(tmp_path_factory.mktemp("tiny_roberta"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny random BertModel checkpoint (no MLM head, like MiniLM) with a WordPiece vocab."""
    import tiny_models

    return tiny_models.make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_mpnet_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny random MPNetModel checkpoint (no MLM head) with an MPNet WordPiece tokenizer."""
    import tiny_models

    return tiny_models.make_tiny_mpnet(tmp_path_factory.mktemp("tiny_mpnet"))


# Without absolute positions, a tiny random DeBERTa or ModernBERT at the 0.02 default carries
# little of the input into the <mask> state (its spread over the tiny task's examples is 0.003
# and 0.03 of its scale 0.75; RoBERTa's 0.5): at 0.3 they carry as much, and learn the task.
TINY_FAMILY_INIT = 0.3


@pytest.fixture(scope="session")
def tiny_deberta_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny random DeBERTa-v3 checkpoint with its MLM head and a trained Unigram tokenizer."""
    import tiny_models

    return tiny_models.make_tiny_deberta(
        tmp_path_factory.mktemp("tiny_deberta"), initializer_range=TINY_FAMILY_INIT
    )


@pytest.fixture(scope="session")
def tiny_modernbert_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny random ModernBERT checkpoint with its MLM head and a trained BPE tokenizer."""
    import tiny_models

    return tiny_models.make_tiny_modernbert(
        tmp_path_factory.mktemp("tiny_modernbert"), initializer_range=TINY_FAMILY_INIT
    )
