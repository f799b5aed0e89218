"""Matplotlib, set up for writing files on machines without a display."""

import pathlib


def pyplot():
    """`matplotlib.pyplot` on the file-only Agg backend (TPU VMs and CI have no display)."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "The analysis plots need matplotlib: pip install -e '.[analysis]'."
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: str | pathlib.Path) -> pathlib.Path:
    """Writes `figure` to `path` (parents created) and closes it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    pyplot().close(figure)
    return path
