"""The model: the frozen encoder, its pretrained weights, and what trains around it.

- `encoder`: the Flax RoBERTa/BERT encoder that takes input embeddings; `mpnet`: MPNet's.
- `pretrained`, `safetensors_file`: Hugging Face checkpoints from a directory or the hub.
- `models`: the prompt generator, task head, critics and `InfoPromptModel`'s forward pass.
- `objective`, `losses`: the InfoPrompt objective and its pure building blocks.
- `methods`: each method (InfoPrompt, its ablations, baselines) as a model config and weights.
- `model_init`: the initial parameter tree; `trainable`: which parameters train.
"""
