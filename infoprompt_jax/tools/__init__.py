"""Developer tools, apart from the training core: the step benchmark, the step profiler and the
PyTorch reference model the benchmark and the parity tests compare against.

Only this package imports torch (the training core never does):

    python -m infoprompt_jax.tools.bench --config=configs/rte.py
    python -m infoprompt_jax.tools.profile_step --config=configs/rte.py
"""
