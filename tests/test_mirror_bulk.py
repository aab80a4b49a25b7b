"""The no-op mirror's bulk path: listings kept in C (fitsync._walk) and compared
record by record must decide exactly what the per-Entry plan decides."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fitsync._walk import BatchReader, Listing, hex_digests, scan
from fitsync.remotes.local import LocalRemote
from fitsync.engine.mirror import Mirror, MirrorOptions

BASE_NS = 1_700_000_000_123_456_789


class PerEntry(LocalRemote):
    """The same tree, listed the generic way (its own list(): no bulk listing)."""

    def list(self):
        return super().list()


def make(root: Path, files: dict[str, tuple[int, int]]) -> None:
    """files: relative path -> (size, mtime_ns)."""
    for rel, (size, mtime_ns) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, ns=(mtime_ns, mtime_ns))


def plan_of(src: LocalRemote, dst: LocalRemote, **options):
    mirror = Mirror(src, dst, MirrorOptions(**options))
    items = mirror.plan()
    result = mirror.result
    summary = (result.files_total, result.bytes_total, result.files_unchanged, result.files_failed,
               [f["path"] for f in result.failures])
    return [(i.path, i.action, i.reason, i.src, i.dst) for i in items], summary, mirror


def test_walk_order_is_python_str_order_of_full_paths(tmp_path):
    # A directory sorts by its name followed by '/', so "abc.txt" < "abc/x" < "abc0".
    names = ["abc/x", "abc.txt", "abc0", "ab", "abc-d/e", "z", "a b/c", "A", "é.fits", "日本/語.dat", "abc/y/z"]
    make(tmp_path, {n: (1, BASE_NS) for n in names})
    listing, error = scan(str(tmp_path), ".fitsync")
    assert error is None
    assert [row[0] for row in listing.rows()] == sorted(names)
    assert listing.in_str_order
    halves, _ = scan(str(tmp_path), ".fitsync", two_threads=True)  # top level shared by two threads
    assert halves.rows() == listing.rows()
    made = listing.entries(lambda *fields: fields)
    assert made == [(path, size, mtime_ns / 1e9) for path, size, mtime_ns in listing.rows()]
    assert len(listing) == len(names) and listing.total_size == len(names)


def test_state_dir_and_symlinks_are_not_listed(tmp_path):
    make(tmp_path, {"a": (3, BASE_NS), ".fitsync/lock": (1, BASE_NS), "sub/.fitsync": (2, BASE_NS)})
    (tmp_path / "link").symlink_to(tmp_path / "a")
    listing, _ = scan(str(tmp_path), ".fitsync")
    assert [row[:2] for row in listing.rows()] == [("a", 3), ("sub/.fitsync", 2)]


def test_names_that_are_not_utf8_keep_python_order(tmp_path):
    raw = os.fsencode(str(tmp_path))
    for name in (b"\x80bad", b"\xc3\xa9", b"b", b"\xff"):
        with open(raw + b"/" + name, "wb") as f:
            f.write(b"1")
    listing, _ = scan(str(tmp_path), ".fitsync")
    assert not listing.in_str_order
    expected = sorted(os.fsdecode(n) for n in (b"\x80bad", b"\xc3\xa9", b"b", b"\xff"))
    assert [e.path for e in LocalRemote(str(tmp_path)).list()] == expected


def test_unsafe_names_are_rejected_and_left_out_of_the_listing(tmp_path):
    make(tmp_path, {"ok": (4, BASE_NS), "bad\nname": (5, BASE_NS), "back\\slash": (6, BASE_NS)})
    remote = LocalRemote(str(tmp_path))
    listing = remote.bulk_listing()
    assert [row[0] for row in listing.rows()] == ["ok"]
    assert len(listing) == 1 and listing.total_size == 4
    assert sorted(p for p, _ in remote.rejected_names) == ["back\\slash", "bad\nname"]
    diff = listing.diff(Listing(), 1e-6)
    assert (diff.unchanged, diff.only_other) == (0, [])
    assert [(listing.row(i)[0], j) for i, j in diff.differing] == [("ok", -1)]


def test_diff_reports_only_what_differs(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make(src, {"same": (1, BASE_NS), "size": (2, BASE_NS), "mtime": (1, BASE_NS), "new": (1, BASE_NS)})
    make(dst, {"same": (1, BASE_NS), "size": (3, BASE_NS), "mtime": (1, BASE_NS + 5_000), "gone": (1, BASE_NS)})
    a, _ = scan(str(src), ".fitsync")
    b, _ = scan(str(dst), ".fitsync")
    diff = a.diff(b, 1e-6)
    assert (diff.unchanged, diff.unchanged_bytes) == (1, 1)
    assert [(a.row(i)[0], b.row(j)[0] if j >= 0 else None) for i, j in diff.differing] == [
        ("mtime", "mtime"), ("new", None), ("size", "size")]
    assert [b.row(j)[0] for j in diff.only_other] == ["gone"]
    with pytest.raises(ValueError):
        diff.compare_contents(str(src), str(dst), 0, 1)  # pairs were not kept


def test_compare_contents_finds_equal_sized_files_whose_bytes_differ(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    big = os.urandom(3 << 20)  # more than one compare chunk
    files = {"same": b"abc" * 1000, "flipped": b"x" * 5000, "big": big, "bigtail": big, "empty": b"", "gone": b"q"}
    for root in (src, dst):
        root.mkdir()
        for name, data in files.items():
            (root / name).write_bytes(data)
    (dst / "flipped").write_bytes(b"x" * 4999 + b"y")
    (dst / "bigtail").write_bytes(big[:-1] + bytes([big[-1] ^ 1]))
    for root in (src, dst):
        for name in files:
            if (root / name).exists():
                os.utime(root / name, ns=(BASE_NS, BASE_NS))
    a, _ = scan(str(src), ".fitsync")
    b, _ = scan(str(dst), ".fitsync")
    (dst / "gone").unlink()  # vanished after listing: could not be compared
    diff = a.diff(b, 1e-6, keep_unchanged=True)
    assert diff.unchanged == len(files)
    found = diff.compare_contents(str(src), str(dst), 0, diff.unchanged)
    named = {a.row(diff.unchanged_pair(k)[0])[0]: (err, side) for k, err, side in found}
    assert named == {"flipped": (0, 0), "bigtail": (0, 0), "gone": (errno.ENOENT, 1)}
    # Ranges split the work (threads take one each) and give the same answer.
    halves = diff.compare_contents(str(src), str(dst), 0, 3) + diff.compare_contents(str(src), str(dst), 3, 99)
    assert halves == found


def test_batch_reader_and_hex_digests(tmp_path):
    import blake3

    files = {"a": b"SIMPLE  = T" + b" " * 100, "d/b": os.urandom(5000), "d/e": b""}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    names = ["a", "d/b", "d/e", "link", "../outside", "missing", "d/b"]
    sizes = [len(files["a"]), 5000, 0, 10, 1, 1, 4000]  # the last: listed smaller than it is now
    reader = BatchReader(str(tmp_path), names, sizes, [0, 2, 7], 1 << 16)
    spans, buffer = reader.get(0)
    assert [bytes(buffer[o:o + n]) for o, n in spans] == [files["a"], files["d/b"]]
    digests, starting = hex_digests(blake3.blake3, buffer, spans, b"SIMPLE  =")
    assert digests == [blake3.blake3(files[n]).hexdigest() for n in ("a", "d/b")] and starting == [0]
    spans, buffer = reader.get(1)
    assert bytes(buffer[spans[0][0]:spans[0][0] + spans[0][1]]) == b""
    assert spans[1] == errno.ELOOP  # a symlink is never followed
    assert isinstance(spans[2], int) and spans[3] == errno.ENOENT  # nothing outside the root
    assert spans[4] is None  # grew since listed: to be read another way
    digests, _ = hex_digests(blake3.blake3, buffer, spans)
    assert digests == [blake3.blake3(b"").hexdigest(), None, None, None, None]
    with pytest.raises(RuntimeError):
        reader.get(0)  # batches are taken in order
    reader.done(0)
    reader.done(1)
    reader.close()
    with pytest.raises(ValueError):
        BatchReader(str(tmp_path), ["a"], [1 << 20], [0, 1], 1 << 16)  # does not fit the buffers


def test_batch_reader_takes_turns_with_two_buffers(tmp_path):
    names = [f"f{i}" for i in range(50)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([i]) * (i + 1))
    bounds = list(range(0, 51, 5))  # 10 batches over 2 buffers
    reader = BatchReader(str(tmp_path), names, [i + 1 for i in range(50)], bounds, 4096)
    for k in range(10):
        spans, buffer = reader.get(k)
        assert [bytes(buffer[o:o + n]) for o, n in spans] == [bytes([i]) * (i + 1) for i in range(5 * k, 5 * k + 5)]
        with pytest.raises(BufferError):
            buffer.extend(b"x")  # the reader's buffers cannot move under its thread
        reader.done(k)
    reader.close()
    # Dropped half-way: the thread is stopped and joined, nothing hangs.
    reader = BatchReader(str(tmp_path), names, [i + 1 for i in range(50)], bounds, 4096)
    reader.get(0)
    del reader


@pytest.mark.parametrize("algo", ["blake3", "sha256"])
def test_bulk_hashing_gives_the_per_file_digests(tmp_path, algo):
    from fitsync.hashes import file_digest
    from fitsync.scan import READ_BATCH_BYTES, digest_entries, hash_local_files

    files = {f"d{i % 3}/f{i}": os.urandom(i * 997 % 9000) for i in range(40)}
    files["big"] = os.urandom(READ_BATCH_BYTES + 5)  # larger than a batch: hashed on its own
    files["fits.dat"] = b"SIMPLE  =" + b"x" * 50
    make(tmp_path, {n: (0, BASE_NS) for n in files})
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    remote = LocalRemote(str(tmp_path))
    entries = list(remote.list())
    (tmp_path / "d0/f3").unlink()
    digests, errors = digest_entries(remote, entries, algo=algo)
    expected = {n: file_digest(str(tmp_path / n), algo) for n in files if n != "d0/f3"}
    assert digests == expected
    assert errors == {"d0/f3": "cannot read: No such file or directory"}
    assert digest_entries(PerEntry(str(tmp_path)), entries, algo=algo) == (digests, errors)
    _, _, starting = hash_local_files(remote, entries, algo=algo, starts_with=b"SIMPLE")
    assert [e.path for e in starting] == ["fits.dat"]


def test_bulk_plan_is_used_for_two_local_trees(tmp_path):
    make(tmp_path / "src", {"a": (1, BASE_NS)})
    mirror = Mirror(LocalRemote(str(tmp_path / "src")), LocalRemote(str(tmp_path / "dst")), MirrorOptions())
    assert mirror.can_plan_in_bulk()
    assert Mirror(LocalRemote(str(tmp_path / "src")), LocalRemote(str(tmp_path / "dst")),
                  MirrorOptions(checksum=True)).can_plan_in_bulk()
    for options in ({"only_paths": {"a"}}, {"selection": object()}):
        assert not Mirror(LocalRemote(str(tmp_path / "src")), LocalRemote(str(tmp_path / "dst")),
                          MirrorOptions(**options)).can_plan_in_bulk()
    assert not Mirror(PerEntry(str(tmp_path / "src")), LocalRemote(str(tmp_path / "dst")),
                      MirrorOptions()).can_plan_in_bulk()


NAMES = st.sampled_from(["a", "a.b", "a/b", "a/c", "a-b/c", "ab", "é", "d/e/f", "d/e.f", "bad\nname", "z z"])
# mtime offsets around the 1 us tolerance, where float rounding could tip a decision
OFFSETS = st.sampled_from([0, 1, 999, 1000, 1001, 1_000_000, -999, -1000, -1001])
FILE = st.tuples(st.integers(0, 3), OFFSETS)


def _consistent(files: dict) -> dict:
    """Drop paths that would need a name to be both a file and a directory."""
    out = {}
    for path in sorted(files):
        if any(path.startswith(p + "/") or p.startswith(path + "/") for p in out):
            continue
        out[path] = files[path]
    return out


def outcome_of(src, dst, **options):
    """plan_of's (items, summary), or ("refused", error type) when the plan is refused."""
    from fitsync.errors import FitsyncError

    try:
        return plan_of(src, dst, **options)[:2]
    except FitsyncError as exc:
        return "refused", type(exc).__name__


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=st.dictionaries(NAMES, FILE, max_size=8), dst=st.dictionaries(NAMES, FILE, max_size=8),
       dst_exists=st.booleans(), delete=st.booleans())
@example(src={}, dst={"a": (0, 0)}, dst_exists=True, delete=True)  # an empty source with --delete: refused
def test_bulk_plan_decides_exactly_as_the_per_entry_plan(src, dst, dst_exists, delete):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make(root / "src", {p: (size, BASE_NS + off) for p, (size, off) in _consistent(src).items()})
        (root / "src").mkdir(exist_ok=True)
        if dst_exists:
            make(root / "dst", {p: (size, BASE_NS) for p, (size, off) in _consistent(dst).items()})
            (root / "dst").mkdir(exist_ok=True)
        local = (LocalRemote(str(root / "src")), LocalRemote(str(root / "dst")))
        assert Mirror(*local, MirrorOptions(delete=delete)).can_plan_in_bulk()
        # Both planners decide the same, refusals included (--delete with a source that lists nothing).
        bulk = outcome_of(*local, delete=delete)
        generic = outcome_of(PerEntry(str(root / "src")), PerEntry(str(root / "dst")), delete=delete)
        assert bulk == generic
        if delete and not src and _consistent(dst) and dst_exists:
            assert bulk == ("refused", "BadInput")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.dictionaries(NAMES, st.tuples(st.integers(0, 3), st.booleans(), st.booleans()), max_size=8),
       jobs=st.integers(1, 3))
def test_bulk_checksum_decides_exactly_as_the_per_entry_plan(files, jobs):
    """--checksum: (size, corrupt the copy, mtime differs) per file."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = _consistent(files)
        make(root / "src", {p: (size, BASE_NS) for p, (size, _, _) in files.items()})
        make(root / "dst", {p: (size, BASE_NS + (5000 if moved else 0)) for p, (size, _, moved) in files.items()})
        (root / "src").mkdir(exist_ok=True)
        (root / "dst").mkdir(exist_ok=True)
        for path, (size, corrupt, moved) in files.items():
            if corrupt and size:
                (root / "dst" / path).write_bytes(b"y" * size)
                os.utime(root / "dst" / path, ns=(BASE_NS + (5000 if moved else 0),) * 2)
        bulk, bulk_summary, mirror = plan_of(LocalRemote(str(root / "src")), LocalRemote(str(root / "dst")),
                                             checksum=True, jobs=jobs)
        assert mirror.can_plan_in_bulk()
        generic, generic_summary, _ = plan_of(PerEntry(str(root / "src")), PerEntry(str(root / "dst")),
                                              checksum=True, jobs=jobs)
        # The per-entry plan keeps UNCHANGED items (to log them); the bulk plan counts them.
        unchanged = [i for i in generic if i[1] == "unchanged"]
        assert bulk == [i for i in generic if i[1] != "unchanged"]
        assert bulk_summary[2] == len(unchanged) + generic_summary[2]
        assert bulk_summary[:2] == generic_summary[:2]


@pytest.mark.parametrize("offset_ns", [0, 999, 1000, 1001, 2000])
def test_mtime_tolerance_matches_the_per_entry_rule(tmp_path, offset_ns):
    make(tmp_path / "src", {"f": (1, BASE_NS + offset_ns)})
    make(tmp_path / "dst", {"f": (1, BASE_NS)})
    bulk, _, _ = plan_of(LocalRemote(str(tmp_path / "src")), LocalRemote(str(tmp_path / "dst")))
    generic, _, _ = plan_of(PerEntry(str(tmp_path / "src")), PerEntry(str(tmp_path / "dst")))
    assert bulk == generic


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.sampled_from([0, 1, 5000, 1 << 19, (1 << 20) - 1]), max_size=3000))
def test_read_batches_fill_each_buffer_in_order(sizes):
    from fitsync.remotes.base import Entry
    from fitsync.scan import READ_BATCH_BYTES, READ_BATCH_FILES, _read_batches

    entries = [Entry(str(i), size, 0.0) for i, size in enumerate(sizes)]
    bounds = _read_batches(entries)
    assert bounds[0] == 0 and bounds[-1] == len(entries)
    batches = [entries[a:b] for a, b in zip(bounds, bounds[1:])]
    used = [sum(e.size + 1 for e in batch) for batch in batches]
    assert all(batch and len(batch) <= READ_BATCH_FILES for batch in batches)
    assert all(u <= READ_BATCH_BYTES for u in used)
    for batch, room, following in zip(batches, used, batches[1:]):  # no batch could have taken one more file
        assert len(batch) == READ_BATCH_FILES or room + following[0].size + 1 > READ_BATCH_BYTES
