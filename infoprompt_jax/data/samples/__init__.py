"""Small real data that ships inside the package, so a first run needs no download.

`sst2/` holds 256 rows of GLUE SST-2's train split and its whole dev split, in GLUE's own TSV
format (`SOURCES.md` beside this file says where they come from and under which terms).
`configs/demo.py` trains on them.
"""

import pathlib

SAMPLES_DIR = pathlib.Path(__file__).resolve().parent


def sample_dir(name: str) -> pathlib.Path:
    """The folder of the shipped sample `name` (e.g. "sst2"), for `--config.data.dir`."""
    path = SAMPLES_DIR / name
    if not path.is_dir():
        known = sorted(p.name for p in SAMPLES_DIR.iterdir() if p.is_dir() and p.name[0] != "_")
        raise FileNotFoundError(f"no shipped data sample {name!r}; the package ships {known}")
    return path
