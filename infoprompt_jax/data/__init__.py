"""From files to tokenized arrays: tasks, their sources, templates and metrics.

- `tasks`: what a task is (labels, verbalizers, template, metrics, where its splits live).
- `readers`: the local file formats as records; `sources`: a split from local files,
  Hugging Face datasets or TFDS, and few-shot subsets.
- `templates`: the template language and the tokenizer of prompted and unprompted inputs.
- `metrics`: task metrics as pure numpy functions.
"""
