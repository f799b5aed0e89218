import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


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
