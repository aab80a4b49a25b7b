"""Zero runs written as holes for sources that cannot say where their holes
are (fitsync.holes): the bytes read back are always the bytes given
(hypothesis), and a mostly-zero file copied over HTTP, through the page cache
and around it (direct I/O, when a manifest vouches for it), takes about its
data on disk."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fitsync.holes import HOLE, HoleWriter, data_runs
from http_fixture import HttpFixture
from sshd_fixture import home, sshd  # noqa: F401  (fixtures)

FITSYNC = str(Path(sys.executable).with_name("fitsync"))

pieces = st.lists(st.one_of(st.binary(min_size=1, max_size=3000),
                            st.integers(1, 3 * HOLE).map(bytes)), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(pieces, st.integers(0, 2 * HOLE), st.lists(st.integers(1, 2 * HOLE), min_size=1, max_size=6))
def test_what_is_written_reads_back_the_same(tmp_path_factory, parts, at, writes):
    data = b"".join(parts)
    path = tmp_path_factory.mktemp("h") / "f"
    with open(path, "w+b") as out:
        out.write(b"P" * at)  # a resumed copy starts past what it had
        writer, done, i = HoleWriter(out, at), 0, 0
        while done < len(data):
            n = writes[i % len(writes)]
            writer.write(data[done:done + n])
            done, i = done + n, i + 1
        writer.finish()
    assert path.read_bytes() == b"P" * at + data


@given(pieces, st.integers(0, 3 * HOLE))
def test_only_whole_aligned_zero_pieces_are_left_out(parts, at):
    data = b"".join(parts)
    view = memoryview(data)
    written = bytearray(len(data))
    last = 0
    for start, end in data_runs(view, at):
        assert last <= start < end <= len(data)
        written[start:end] = data[start:end]
        for gap in range(last, start, HOLE):  # every skipped piece: aligned, whole, zeros
            assert (at + gap) % HOLE == 0 and data[gap:gap + HOLE] == bytes(HOLE)
        last = end
    assert bytes(written) == data


def _mostly_zeros(path: Path, size: int) -> bytes:
    data = bytearray(size)
    data[size // 3: size // 3 + (1 << 20)] = os.urandom(1 << 20)
    data[-5:] = b"tail!"
    path.write_bytes(data)
    return bytes(data)


def test_a_mostly_zero_file_from_http_takes_about_its_data(tmp_path):
    site = tmp_path / "site" / "rel"
    site.mkdir(parents=True)
    small = _mostly_zeros(site / "small.dat", 24 << 20)   # through the page cache
    large = _mostly_zeros(site / "large.dat", 96 << 20)   # direct I/O, vouched for by a manifest
    made = subprocess.run([FITSYNC, "manifest", site, f"--output={tmp_path / 'm.jsonl'}"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    with HttpFixture(str(tmp_path / "site")) as server:
        result = subprocess.run([FITSYNC, "mirror", server.url + "/rel/", tmp_path / "dst",
                                 f"--manifest={tmp_path / 'm.jsonl'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name, data in (("small.dat", small), ("large.dat", large)):
        copy = tmp_path / "dst" / name
        assert copy.read_bytes() == data
        assert copy.stat().st_blocks * 512 <= 3 << 20, (name, copy.stat().st_blocks)


def test_a_delta_update_keeps_the_holes_of_a_sparse_file(tmp_path):
    """The old copy's holes stay holes where the basis is reused, and the new
    version's zero runs become holes: through the page cache (24 MiB) and
    with direct I/O (96 MiB)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for name, size in (("small.dat", 24 << 20), ("large.dat", 96 << 20)):
        for root, edit in ((dst, b"old version"), (src, b"new version")):
            with open(root / name, "wb") as f:
                f.truncate(size)
                f.seek(size // 3)
                f.write(os.urandom(1 << 20) if root is dst else (dst / name).read_bytes()[size // 3:size // 3 + (1 << 20)])
                f.seek(size // 2)
                f.write(edit)
        os.utime(dst / name, (1_600_000_000, 1_600_000_000))
    result = subprocess.run([FITSYNC, "mirror", src, dst, "--no-whole-file", "--itemize"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("small.dat", "large.dat"):
        copy = dst / name
        assert copy.read_bytes() == (src / name).read_bytes()
        assert copy.stat().st_blocks * 512 <= 3 << 20, (name, copy.stat().st_blocks * 512)


def test_holes_survive_an_sftp_push_to_a_stock_host(sshd, home, tmp_path):  # noqa: F811  (fixtures)
    """A new file uploaded over SFTP skips its zero runs (the server's writes at
    offsets leave holes), and a delta pushed to a stock host's agent keeps the
    old copy's holes and makes holes of the new version's zero runs."""
    from test_sftp_mirror import sftp_url

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    size = 24 << 20
    for name in ("new.dat", "changed.dat"):
        with open(src / name, "wb") as f:
            f.truncate(size)
            f.seek(size // 3)
            f.write(os.urandom(1 << 20))
            f.seek(size - 5)
            f.write(b"tail!")
    with open(dst / "changed.dat", "wb") as f:  # an older version: the same data, one edit
        f.write((src / "changed.dat").read_bytes())
        f.seek(size // 2)
        f.write(b"old edit")
    with open(dst / "changed.dat", "r+b") as f:  # made sparse again, as it would be
        data = f.read()
    (dst / "changed.dat").unlink()
    with open(dst / "changed.dat", "wb") as f:
        f.truncate(size)
        for at in (size // 3, size // 2, size - 5):
            f.seek(at)
            f.write(data[at:at + (1 << 20) if at == size // 3 else at + 8])
    os.utime(dst / "changed.dat", (1_600_000_000, 1_600_000_000))
    result = subprocess.run([FITSYNC, "mirror", src, sftp_url(sshd, dst), "--json", "--itemize"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(home)})
    assert result.returncode == 0, result.stderr
    moved = {row["path"]: row["bytes_moved"] for row in json.loads(result.stdout)["files"]}
    assert moved["changed.dat"] < 1 << 20  # a delta, patched by the host's agent
    for name in ("new.dat", "changed.dat"):
        copy = dst / name
        assert copy.read_bytes() == (src / name).read_bytes(), name
        assert copy.stat().st_blocks * 512 <= 3 << 20, (name, copy.stat().st_blocks * 512)
