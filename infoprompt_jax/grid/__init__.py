"""Experiment grids: the grid files, how cells stack, the runner and the report.

- `grids`: the grid file format, its cells and their directories.
- `cell_stacks`: which cells train together in one process.
- `runner`: `python -m infoprompt_jax.experiments`; `report`: `python -m infoprompt_jax.report`.
"""
