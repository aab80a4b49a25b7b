"""Fuzz targets for fitsync's parsers of outside input, shared by the CI subset
(tests/test_reliability_fuzz.py, a few thousand examples each) and the long
runs (stress/fuzz_parsers.py, 100,000+ each).

Each target takes the input hypothesis drew, calls one parser, and lets only
that parser's documented errors pass (``allowed``). Anything else -- another
exception, a run longer than ``TIME_LIMIT`` seconds, or more than
``MEMORY_LIMIT`` bytes allocated for an input a few KiB long -- is a failure.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import signal
import struct
import tempfile
import tracemalloc
from contextlib import contextmanager

from hypothesis import strategies as st

from fitsync.errors import BadInput, FitsyncError

TIME_LIMIT = 5.0  # seconds per input: anything slower counts as a hang
MEMORY_LIMIT = 256 << 20  # bytes allocated per input (the agent's frame header cap is 64 MiB)
# Tracing allocations halves the speed: always on for the frame readers (their
# inputs say how much to read), on for every target when this is set (stress).
TRACE_ALL = bool(os.environ.get("FITSYNC_FUZZ_TRACE_ALL"))


class Hang(Exception):
    pass


class HugeAllocation(Exception):
    pass


@contextmanager
def guarded(limit: float = TIME_LIMIT, memory: int = MEMORY_LIMIT, trace: bool = True):
    """Fail an input that runs too long or allocates too much."""
    fired = []

    def on_alarm(signum, frame):
        # Raised wherever the interpreter is; if that is a callback that
        # swallows exceptions (a gc callback), ``fired`` still tells.
        fired.append(True)
        raise Hang(f"no result after {limit} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    if not (trace or TRACE_ALL):
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        if fired:
            raise Hang(f"no result after {limit} s")
        return
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        peak = tracemalloc.get_traced_memory()[1] - base
        if started_tracing:
            tracemalloc.stop()
    if fired:
        raise Hang(f"no result after {limit} s")
    if peak > memory:
        raise HugeAllocation(f"{peak} bytes allocated")


def expect_only(allowed: tuple, fn, *args, trace: bool = False):
    """Call ``fn``; documented errors are fine, anything else propagates."""
    with guarded(trace=trace):
        try:
            return fn(*args)
        except allowed:
            return None
        except MemoryError as exc:
            raise HugeAllocation("MemoryError") from exc


# -- hostile path names ---------------------------------------------------------------

HOSTILE_NAMES = [
    "..", "../x", "a/../../x", "/etc/passwd", "//x", "a/./b", "a//b", "./", ".", "", "a\x00b", "a\nb", "a\rb",
    "a\\..\\b", "..\\x", "x" * 256, "a/" + "y" * 300, "/".join(["d"] * 2100), "\u202e", "a/\udcff", "~/x",
    ".fitsync/lock", "a/..", "...", " ../x", "a/ ../b",
]
path_text = st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(max_size=40),
                      st.lists(st.sampled_from(["..", ".", "a", "", "b c", "\x00", "/"]), max_size=6).map("/".join))


def assert_safe_relpath(path: str) -> None:
    """What every path that a parser lets through must be."""
    assert isinstance(path, str) and path and not path.startswith("/"), path
    parts = path.split("/")
    assert ".." not in parts and "" not in parts and "." not in parts, path
    assert not any(c in path for c in "\x00\n\r\\"), path


# -- manifest -----------------------------------------------------------------------

HEADER = {"format": "fitsync-manifest", "version": 1}
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
                        st.floats(), st.text(max_size=20))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)
hex64 = st.text("0123456789abcdefABCDEF", min_size=64, max_size=64)
record = st.fixed_dictionaries({}, optional={
    "path": st.one_of(path_text, json_value), "size": st.one_of(st.integers(min_value=-5, max_value=1 << 66), json_value),
    "mtime": st.one_of(st.floats(), json_value), "blake3": st.one_of(hex64, st.text(max_size=70), json_value),
    "blocks": st.one_of(st.text(max_size=30), json_value)})
header_record = st.one_of(st.just(HEADER), st.fixed_dictionaries(
    {"format": st.sampled_from(["fitsync-manifest", "x"]),
     "version": st.one_of(st.integers(min_value=-2, max_value=3), json_value)},
    optional={"files": st.one_of(st.integers(min_value=-1, max_value=5), json_value)}))


def _lines(header, records, junk):
    out = [json.dumps(header)] + [json.dumps(r, ensure_ascii=False) for r in records]
    return ("\n".join(out) + "\n").encode("utf-8", "surrogatepass") + junk


manifest_bytes = st.one_of(
    st.binary(max_size=2000),
    st.builds(_lines, header_record, st.lists(record, max_size=5), st.binary(max_size=40)),
    # Deep nesting and huge numbers: what the json module itself refuses in its own ways.
    st.builds(lambda n, c: _lines(HEADER, [], c * n), st.integers(1, 200_000), st.sampled_from([b"[", b"{\"a\":"])),
    st.builds(lambda n: _lines(HEADER, [], b'{"path":"a","size":' + b"9" * n + b'}'), st.integers(1, 10_000)),
)


def target_manifest(data: bytes) -> None:
    from fitsync.formats.manifest import parse_manifest_bytes

    manifest = expect_only((BadInput,), parse_manifest_bytes, data, "fuzz")
    if manifest is not None:
        for path, entry in manifest.entries.items():
            assert_safe_relpath(path)
            assert isinstance(entry.size, int) and entry.size >= 0
            assert len(entry.blake3) == 64 and all(c in "0123456789abcdef" for c in entry.blake3), entry.blake3
            expect_only((BadInput,), entry.signature)


# -- signatures and recipes -------------------------------------------------------------

def _sealed(body: bytes) -> bytes:
    from fitsync.signature import seal

    return seal(body)


def _signature_blob(fields, nbounds_list, extra):
    from fitsync.signature import _HEADER, MAGIC

    version, weak_id, strong_id, block_size, file_size, nblocks, digest = fields
    header = _HEADER.pack(MAGIC, version, weak_id, strong_id, block_size, file_size, len(nbounds_list), 0,
                          nblocks, digest)
    body = header + struct.pack(f"<{len(nbounds_list)}Q", *nbounds_list) + extra
    return _sealed(body)


u64 = st.one_of(st.integers(0, 1 << 16), st.integers(0, (1 << 64) - 1), st.sampled_from([0, 1, 2880, (1 << 63), (1 << 64) - 1]))
u32 = st.one_of(st.integers(0, 1 << 12), st.integers(0, (1 << 32) - 1))
signature_fields = st.tuples(st.sampled_from([1, 1, 1, 0, 2]), st.sampled_from([1, 1, 0, 2]), st.sampled_from([1, 1, 0]),
                             u32, u64, u32, st.binary(min_size=32, max_size=32))


def _valid_signature(data: bytes) -> bytes:
    from fitsync.signature import signature_of_buffer

    return signature_of_buffer(data).to_bytes()


def _mutate(blob: bytes, edits) -> bytes:
    buf = bytearray(blob)
    for at, value in edits:
        if buf:
            buf[at % len(buf)] = value
    return bytes(buf)


def _reseal(blob: bytes) -> bytes:
    return _sealed(blob[:-8]) if len(blob) >= 8 else blob


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6)
signature_bytes = st.one_of(
    st.binary(max_size=300).map(lambda b: b"FSYNCSIG" + b),
    st.builds(_signature_blob, signature_fields, st.lists(u64, max_size=6), st.binary(max_size=400)),
    st.builds(lambda d, e: _reseal(_mutate(_valid_signature(d), e)), st.binary(max_size=20_000), edits),
    st.builds(lambda sig, n: _reseal(sig[:n] + sig[-8:]), st.binary(max_size=5000).map(_valid_signature),
              st.integers(0, 200)),
)


def target_signature(data: bytes) -> None:
    from fitsync.signature import Signature

    sig = expect_only((BadInput,), Signature.from_bytes, data)
    if sig is not None:
        offsets, lengths = expect_only((BadInput,), sig.layout) or (None, None)
        if offsets is not None:
            assert len(offsets) == len(sig) and int(lengths.sum()) == sig.file_size
        assert Signature.from_bytes(sig.to_bytes()) == sig


def _recipe_blob(version, n_ops, target, basis, ops, digest):
    from fitsync.recipe import _HEADER, _OP, MAGIC

    import numpy as np

    arr = np.array(ops, dtype=_OP) if ops else np.zeros(0, dtype=_OP)
    return _sealed(_HEADER.pack(MAGIC, version, 0, 0, n_ops, target, basis, digest) + arr.tobytes())


op = st.tuples(st.integers(0, 3), u64, u64)
recipe_bytes = st.one_of(
    st.binary(max_size=300).map(lambda b: b"FSYNCRCP" + b),
    st.lists(op, max_size=6).flatmap(lambda ops: st.builds(
        _recipe_blob, st.sampled_from([1, 1, 2]), st.sampled_from([len(ops), len(ops), len(ops) + 1, 1 << 31]),
        st.one_of(st.just(sum(o[2] for o in ops) % (1 << 64)), u64), u64, st.just(ops), st.binary(min_size=32, max_size=32))),
)


def target_recipe(data: bytes) -> None:
    from fitsync.recipe import Recipe

    recipe = expect_only((BadInput,), Recipe.from_bytes, data)
    if recipe is not None:
        assert sum(n for _, _, n in recipe.ops) == recipe.target_size
        for offset, length in recipe.source_ranges():
            assert 0 <= offset and offset + length <= recipe.target_size
        assert Recipe.from_bytes(recipe.to_bytes()).ops == recipe.ops


# -- FITS headers -------------------------------------------------------------------------

KEYWORDS = ["SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "PCOUNT", "GCOUNT", "GROUPS",
            "CHECKSUM", "DATASUM", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZCMPTYPE", "TFIELDS", "TFORM1",
            "EXTNAME", "END", "CONTINUE", "COMMENT", ""]
VALUES = ["T", "F", "8", "16", "-32", "-64", "7", "0", "1", "2", "999", "1000", "-1", "2880", "1e400", "INF", "NAN",
          "-INF", "8.0", "1D3", "'IMAGE   '", "'BINTABLE'", "'RICE_1  '", "'unterminated", "''''", "9" * 69,
          "'0000000000000000'", "1E18", "123456789012345678901234567890"]
card = st.builds(lambda k, v, raw: (f"{k:<8}= {v:>20}" if not raw else raw).ljust(80)[:80].encode("latin-1"),
                 st.sampled_from(KEYWORDS), st.sampled_from(VALUES),
                 st.one_of(st.just(""), st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=80)))


def _fits_file(headers, data_lens, tail):
    out = bytearray()
    for cards, n in zip(headers, data_lens):
        block = b"".join(cards) + b"END".ljust(80)
        out += block + b" " * (-len(block) % 2880) + bytes(n)
    return bytes(out) + tail


fits_bytes = st.one_of(
    st.binary(max_size=6000),
    st.builds(_fits_file, st.lists(st.lists(card, max_size=12), min_size=1, max_size=3),
              st.lists(st.sampled_from([0, 1, 2880, 5760, 100]), min_size=3, max_size=3), st.binary(max_size=100)),
    st.builds(lambda cards: b"".join([b"SIMPLE  =                    T".ljust(80), *cards, b"END".ljust(80)]),
              st.lists(card, max_size=40)).map(lambda b: b + b" " * (-len(b) % 2880)),
)


def _reader(data: bytes):
    return lambda offset, length: data[offset:offset + length]


def target_fits_walk(data: bytes) -> None:
    from fitsync import fits

    expect_only((fits.FitsStructureError,), fits.walk_hdus, _reader(data), len(data))
    bounds = expect_only((), fits.segment_boundaries, _reader(data), len(data))
    assert bounds and bounds[0] == 0 and bounds == sorted(set(bounds)) and bounds[-1] < max(len(data), 1)


def target_agent_fits_boundaries(data: bytes) -> None:
    """The SSH agent repeats the FITS layout rules (stdlib only); both must agree."""
    from fitsync import agent, fits

    theirs = expect_only((), agent.fits_boundaries, _reader(data), len(data))
    assert theirs == fits.segment_boundaries(_reader(data), len(data))


def target_fitsaudit(data: bytes) -> None:
    from fitsync import fitsaudit

    path = os.path.join(_SCRATCH, "fuzz.fits")
    with open(path, "wb") as f:
        f.write(data)
    report = expect_only((), fitsaudit.check_file, path)
    if report is not None:
        json.dumps(report.to_dict())


# -- config files ---------------------------------------------------------------------------

toml_piece = st.sampled_from([
    "[r]\n", "[r.s]\n", "[[r]]\n", "type = \"sftp\"\n", "type = 3\n", "password = \"pw\"\n", "token = 1\n",
    "host = \"h\"\n", "= x\n", "a = [", "]\n", "b = {", "}\n", "c = 1979-05-27T07:32:00Z\n", "d = 9999-99-99\n",
    "e = " + "9" * 5000 + "\n", "f = 1e999\n", "\"\\u0000\" = 1\n", "[\"a b\"]\n", "[..]\n",
])
toml_text = st.one_of(st.text(max_size=300), st.lists(toml_piece, max_size=12).map("".join),
                      st.builds(lambda n, c: "a = " + c * n, st.integers(1, 50_000), st.sampled_from(["[", "{x="])))


_SCRATCH = tempfile.mkdtemp(prefix="fitsync-fuzz-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)


def _scratch_file(name: str, text: str) -> str:
    """A private file holding ``text`` (one scratch directory for the whole run: speed)."""
    path = os.path.join(_SCRATCH, name)
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def target_config(text: str) -> None:
    from fitsync import config

    remotes = expect_only((BadInput,), config.load_remotes, _scratch_file("remotes.toml", text))
    for name, conf in (remotes or {}).items():
        config.public_view(conf)


ini_piece = st.sampled_from(["[dropbox]\n", "[other]\n", "access_token = t\n", "shared_url = https://x\n",
                             "password = p\n", "refresh_token = r\n", "app_key = k\n", "= v\n", "key\n", "  cont\n",
                             "[dropbox]\n[dropbox]\n", "%(x)s\n", "[\n", "a = b = c\n"])
ini_text = st.one_of(st.text(max_size=300), st.lists(ini_piece, max_size=10).map("".join))


def target_dropbox_ini(text: str) -> None:
    from fitsync.remotes.dropbox import read_old_ini

    expect_only((BadInput,), read_old_ini, _scratch_file("vast.ini", text))


# -- the SSH agent's framing ------------------------------------------------------------------

def _frame(header_bytes: bytes, body: bytes, length_delta: int) -> bytes:
    return struct.pack(">I", max(0, len(header_bytes) + length_delta) % (1 << 32)) + header_bytes + body


frame_header = st.one_of(
    st.builds(lambda h: json.dumps(h).encode(), st.one_of(
        json_value, st.fixed_dictionaries({"op": st.text(max_size=8)}, optional={
            "n": st.one_of(st.integers(-5, 50), st.integers(-(1 << 62), 1 << 62), json_value)}))),
    st.binary(max_size=60),
)
frame_bytes = st.one_of(
    st.binary(max_size=200),
    st.builds(_frame, frame_header, st.binary(max_size=60), st.sampled_from([0, 0, 0, -1, 1, 1 << 20, (1 << 32) - 1])),
)


class PipeRaw(io.RawIOBase):
    """A pipe's raw end: short reads, then EOF (what the agent's stdin is)."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), len(self.data), 4096)
        buffer[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


class LiveChannel:
    """The client's end of a live SSH channel: read(n) returns what has arrived,
    and reading with no size would block until the remote side closes."""

    def __init__(self, data: bytes):
        self.data = data

    def read(self, n=-1):
        if n is None or n < 0:
            raise Hang("read() without a size on a live channel waits for the remote side to close it")
        out, self.data = self.data[:n], self.data[n:]
        return out


def target_agent_frames(data: bytes) -> None:
    """The agent's side: frames from the client on stdin."""
    from fitsync.agent import Channel

    chan = Channel(io.BufferedReader(PipeRaw(data)), io.BytesIO())
    for _ in range(4):
        header, body = expect_only((EOFError, ValueError), chan.recv, trace=True) or (None, None)
        if header is None:
            return


def target_client_frames(data: bytes) -> None:
    """The client's side: replies from a (possibly hostile) remote host."""
    from fitsync.remotes.sftp_agent import AgentClient

    client = AgentClient.__new__(AgentClient)  # framing only: no SSH connection behind it
    client.rfile = LiveChannel(data)
    for _ in range(4):
        reply = expect_only((EOFError, ValueError, FitsyncError), client.recv, trace=True)
        if reply is None:
            return
        header, body = reply
        assert isinstance(header, dict)
        assert body is None or isinstance(body, bytes)


TARGETS = {
    "manifest": (target_manifest, manifest_bytes),
    "signature": (target_signature, signature_bytes),
    "recipe": (target_recipe, recipe_bytes),
    "fits_walk": (target_fits_walk, fits_bytes),
    "agent_fits_layout": (target_agent_fits_boundaries, fits_bytes),
    "fitsaudit": (target_fitsaudit, fits_bytes),
    "config": (target_config, toml_text),
    "dropbox_ini": (target_dropbox_ini, ini_text),
    "agent_frames": (target_agent_frames, frame_bytes),
    "client_frames": (target_client_frames, frame_bytes),
}
