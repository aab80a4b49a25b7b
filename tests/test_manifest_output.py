"""Where a manifest goes: --output naming a pipe or device is written into,
never replaced (a temporary file renamed over /dev/null once made it a plain file)."""

from __future__ import annotations

import os
import stat
import threading

from conftest import write_tree


def test_output_to_a_fifo_is_written_into_and_stays_a_fifo(tmp_path, cli):
    write_tree(tmp_path / "tree", {"a.dat": b"abc", "b/c.dat": b"x" * 5000})
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    # A daemon: if the pipe were replaced, nothing would ever open it to write.
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = cli("manifest", tmp_path / "tree", f"--output={fifo}")
    reader.join(timeout=10)
    assert result.code == 0, result.err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    lines = received[0].decode().splitlines()
    assert len(lines) == 3 and '"path": "a.dat"' in lines[1] and '"path": "b/c.dat"' in lines[2]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".fitsync-manifest-")]


def test_output_to_a_regular_file_is_still_replaced_atomically(tmp_path, cli):
    write_tree(tmp_path / "tree", {"a.dat": b"abc"})
    out = tmp_path / "m.jsonl"
    out.write_text("old\n")
    os.link(out, tmp_path / "old-copy")  # a rename leaves the old inode to other links
    assert cli("manifest", tmp_path / "tree", f"--output={out}").code == 0
    assert (tmp_path / "old-copy").read_text() == "old\n"
    assert '"path": "a.dat"' in out.read_text()


# -- the lines formatted in C (fitsync._walk.jsonl_lines) ---------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fitsync._walk import jsonl_lines  # noqa: E402
from fitsync.formats.manifest import ManifestEntry, _jsonl_line, parse_manifest_bytes, write_jsonl  # noqa: E402

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40) | st.sampled_from(
    ['a"b.fits', "back\\slash", "tab\there", "nl\nx", "\x7fdel", "caf\u00e9/\u6587\u4ef6.fits", "\U0001f52d.fz",
     "lone\udc80surrogate", "plain/dir/file.fits"])
entries = st.builds(
    ManifestEntry, names, st.integers(0, 2**62),
    st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, 1600000000.0, 1764640000.123456789]),
    st.text("0123456789abcdef", min_size=64, max_size=64),
    st.none() | st.just({"fits": {"state": "ok", "hdus": 1}}))


@settings(max_examples=300, deadline=None)
@given(st.lists(entries, max_size=8))
def test_lines_formatted_in_c_equal_the_python_lines(batch):
    assert jsonl_lines(batch, _jsonl_line) == "".join(_jsonl_line(e) for e in batch)


def test_a_manifest_written_with_c_lines_reads_back(tmp_path):
    import io

    batch = [ManifestEntry(f"d/f{i}.dat", i * 1000, 1_700_000_000 + i / 7, f"{i:064x}") for i in range(500)]
    out = io.StringIO()
    write_jsonl(out, batch)
    manifest = parse_manifest_bytes(out.getvalue().encode(), "test")
    assert list(manifest.entries.values()) == batch
