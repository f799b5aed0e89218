"""The paper's analysis figures, computed from finished training runs (docs/analysis.md).

- `cmi`: the representation critic's estimate of I(P; Z | X) for learned, random and
  hand-written prompts (Figure 1).
- `landscape`: task and representation loss over a 2-D slice of prompt space spanned by the
  word embeddings' top principal components, with the training trajectory (Figure 2).
- `curves`: dev metrics against steps for several runs, seeds averaged (Figure 3).

Each is a command, `python -m infoprompt_jax.analysis.<name> --help`, built on pure functions
that the tests check against the model.
"""
