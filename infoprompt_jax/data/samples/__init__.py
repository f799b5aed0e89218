"""Small data that ships inside the package, so a first run needs no download.

`reviews/` holds 560 review sentences written for this project (320 train, 240 dev), labelled
negative or positive in GLUE SST-2's TSV format, so the `sst2` task reads them; they are released
under CC0-1.0 (`SOURCES.md` beside this file says how they were made). `configs/demo.py` trains on
them.
"""

import pathlib

SAMPLES_DIR = pathlib.Path(__file__).resolve().parent


def sample_dir(name: str) -> pathlib.Path:
    """The folder of the shipped sample `name` (e.g. "reviews"), for `--config.data.dir`."""
    path = SAMPLES_DIR / name
    if not path.is_dir():
        known = sorted(p.name for p in SAMPLES_DIR.iterdir() if p.is_dir() and p.name[0] != "_")
        raise FileNotFoundError(f"no shipped data sample {name!r}; the package ships {known}")
    return path
