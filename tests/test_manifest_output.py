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
