"""Experiment grids for `python -m infoprompt_jax.experiments --grid=configs/grids/NAME.py`.

Each module defines `get_grid()`; the format is documented in infoprompt_jax/grid/grids.py.
"""
