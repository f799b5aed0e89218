"""Real data the tests read from `../shared`, the folder beside the checkout.

This project's machines and CI keep real GLUE files and the real RoBERTa tokenizer in
`../shared/data` (the repository may not hold copies). A user's clone has no `../shared`: a test
that cannot do without it is marked `requires_shared(...)` and skips, naming the folder; `.ci/run`
refuses to run without it, so in CI these tests always run.
"""

import pathlib

import pytest

SHARED_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared"
GLUE_DIR = SHARED_DIR / "data/glue"
ROBERTA_TOKENIZER_DIR = SHARED_DIR / "data/roberta_tokenizer"


def requires_shared(path: pathlib.Path) -> pytest.MarkDecorator:
    """Skips a test when `path` (inside `../shared`) is absent, saying what is missing."""
    relative = path.relative_to(SHARED_DIR.parent)
    return pytest.mark.skipif(
        not path.exists(),
        reason=f"needs ../{relative} (real data beside the checkout, as in CI); it is absent",
    )
