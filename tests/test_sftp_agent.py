"""fitsync.agent: byte-for-byte agreement with fitsync.signature and fitsync.fits,
the frame protocol, and patching with verify-and-rename (run as a local
subprocess here; over SSH in test_sftp.py and test_sftp_mirror.py)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fitsync import agent as agent_mod
from fitsync import signature as core_signature
from fitsync.fits import segment_boundaries
from fitsync.signature import Signature, signature_of_file
from fitsync.sums import STDLIB

# what the client sends with every signature request (fitsync.remotes.sftp_agent.signature_request)
REQ = {"fits": True, "block_records": [core_signature.MIN_BLOCK_RECORDS, core_signature.MAX_BLOCK_RECORDS]}
HESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hess-dl3-dr1"


def fits_bytes(hdus):
    """A FITS file from (header cards, data bytes) pairs."""
    out = b""
    for i, (cards, data) in enumerate(hdus):
        head = "".join(c.ljust(80) for c in cards + ["END"])
        head = head.ljust(-(-len(head) // 2880) * 2880)
        out += head.encode() + data + b"\0" * (-len(data) % 2880)
    return out


def image(n_bytes, extra_cards=0, first=True):
    cards = (["SIMPLE  =                    T"] if first else ["XTENSION= 'IMAGE   '"]) + [
        "BITPIX  =                    8", "NAXIS   =                    1", f"NAXIS1  = {n_bytes:20d}"]
    if not first:
        cards += ["PCOUNT  =                    0", "GCOUNT  =                    1"]
    cards += [f"COMMENT filler {i}" for i in range(extra_cards)]
    return cards, os.urandom(n_bytes)


def real_files():
    if not HESS.is_dir():
        return []
    return sorted(p for p in HESS.rglob("*.fits*") if p.is_file())[:6]


@pytest.mark.parametrize("data", [
    b"",
    b"x" * 10,
    os.urandom(300_000),
    fits_bytes([image(0), image(100_000, first=False)]),
    fits_bytes([image(50_000, extra_cards=40), image(1, first=False), image(3_000_000, first=False)]),
    fits_bytes([image(20_000)])[:-100],  # truncated: fixed layout
], ids=["empty", "tiny", "binary", "fits", "fits-3hdu", "truncated"])
def test_stdlib_signature_equals_core_signature(tmp_path, data):
    """The agent's zlib/hashlib signature is byte for byte what the compiled
    core makes with the STDLIB suite, in both layouts, with and without digest."""
    path = tmp_path / "f.fits"
    path.write_bytes(data)
    ours = agent_mod.signature_of(str(path), REQ, _FakeAgent("stdlib"))
    assert ours == signature_of_file(path, sums=STDLIB).to_bytes()
    fixed = agent_mod.signature_of(str(path), {"fits": False, "block_size": 4096}, _FakeAgent("stdlib"))
    assert fixed == signature_of_file(path, block_size=4096, fits_aware=False, sums=STDLIB).to_bytes()
    bare = agent_mod.signature_of(str(path), dict(REQ, digest=False), _FakeAgent("stdlib"))
    assert bare == signature_of_file(path, digest=False, sums=STDLIB).to_bytes()
    parsed = Signature.from_bytes(ours)
    assert parsed.sums is STDLIB and parsed == signature_of_file(path, sums=STDLIB)


def test_stdlib_file_digest_is_sha256_of_block_sha256s(tmp_path):
    data = os.urandom(100_000)
    (tmp_path / "f").write_bytes(data)
    sig = Signature.from_bytes(agent_mod.signature_of(str(tmp_path / "f"), {"fits": False, "block_size": 30_000},
                                                      _FakeAgent("stdlib")))
    blocks = [data[i:i + 30_000] for i in range(0, len(data), 30_000)]
    assert sig.digest == hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blocks)).digest()
    assert sig.strong == b"".join(hashlib.sha256(b).digest()[:16] for b in blocks)
    assert sig.weak.tolist() == [zlib.adler32(b) for b in blocks]


def test_stdlib_signature_on_real_release_files():
    files = real_files()
    if not files:
        pytest.fail(f"the H.E.S.S. release is expected at {HESS}")
    for path in files[:3]:
        assert agent_mod.signature_of(str(path), REQ, _FakeAgent("stdlib")) == \
            signature_of_file(path, sums=STDLIB).to_bytes()


def test_fits_boundaries_agree_with_fitsync_fits():
    samples = [fits_bytes([image(0), image(5000, first=False)]), b"SIMPLE  =" + b" " * 3000, b"not fits" * 500]
    samples += [p.read_bytes() for p in real_files()]
    for data in samples:
        read_at = lambda o, n: data[o:o + n]  # noqa: E731
        assert agent_mod.fits_boundaries(read_at, len(data)) == segment_boundaries(read_at, len(data))


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=5000))
def test_adler32_of_the_core_matches_zlib(block):
    """The compiled core's Adler-32, whole and rolled by one byte at a time,
    is zlib's (what a stock host's agent computes)."""
    from fitsync import _native
    assert _native.weak_sum(block, _native.ADLER32) == zlib.adler32(block)
    window = max(1, len(block) // 3)
    out = np.zeros(len(block) - window + 1, dtype=np.uint32)
    _native.rolling_weak_sums(block, window, out, _native.ADLER32)
    assert out.tolist() == [zlib.adler32(block[k:k + window]) for k in range(len(out))]


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 1 << 40))
def test_default_block_size_matches_core(size):
    from fitsync import signature
    bounds = (signature.MIN_BLOCK_RECORDS, signature.MAX_BLOCK_RECORDS)
    assert agent_mod.default_block_size(size, bounds) == signature.default_block_size(size)


class _FakeAgent:
    def __init__(self, kind):
        self.signature = kind
        self.hashes = agent_mod.Hashes()


# -- the protocol, through a real agent process ----------------------------------------

class LocalAgent:
    """fitsync.agent in a subprocess speaking frames on stdin/stdout."""

    def __init__(self, avoid=()):
        self.proc = subprocess.Popen([sys.executable, "-c", "import fitsync.agent as a; a.main()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        self.hello = self.call({"op": "hello", "avoid": list(avoid)})

    def send(self, header, body=None):
        if body is not None:
            header = dict(header, n=len(body))
        raw = json.dumps(header).encode()
        self.proc.stdin.write(struct.pack(">I", len(raw)) + raw + (body or b""))
        self.proc.stdin.flush()

    def recv(self):
        (n,) = struct.unpack(">I", self.proc.stdout.read(4))
        header = json.loads(self.proc.stdout.read(n))
        body = self.proc.stdout.read(header["n"]) if "n" in header else None
        return header, body

    def call(self, header, body=None):
        self.send(header, body)
        while True:
            reply, data = self.recv()
            if "more" not in reply:
                return reply

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture(params=["fitsync-installed", "stdlib-only"])
def local_agent(request):
    """An agent on a host with fitsync installed (its own patcher) or without
    (the agent's stdlib code): both must behave the same."""
    agent = LocalAgent(avoid=("fitsync",) if request.param == "stdlib-only" else ())
    yield agent
    agent.close()


def test_patch_builds_verifies_and_renames(tmp_path, local_agent):
    basis = os.urandom(100_000)
    new = basis[:40_000] + b"NEW DATA" + basis[50_000:]
    (tmp_path / "f.bin").write_bytes(basis)
    from fitsync.delta import BASIS, SOURCE, Recipe
    recipe = Recipe([(BASIS, 0, 40_000), (SOURCE, 40_000, 8), (BASIS, 50_000, 50_000)], len(new),
                    blake3.blake3(new).hexdigest())
    req = {"op": "patch", "path": str(tmp_path / "f.bin"), "basis": str(tmp_path / "f.bin"),
           "tmp": str(tmp_path / ".fitsync/tmp/f.part"), "algo": "blake3",
           "expected": blake3.blake3(new).hexdigest(), "mtime_ns": 1_500_000_000_123_456_789}
    local_agent.send(req, recipe.to_bytes())
    local_agent.send({"op": "data"}, b"NEW ")
    local_agent.send({"op": "data"}, b"DATA")
    local_agent.send({"op": "end"})
    reply, _ = local_agent.recv()
    assert reply["ok"] and (tmp_path / "f.bin").read_bytes() == new
    assert os.stat(tmp_path / "f.bin").st_mtime_ns == 1_500_000_000_123_456_789
    # a wrong digest: refused, the old file untouched, no temp left, and the channel still in step
    req["expected"] = "0" * 64
    local_agent.send(req, recipe.to_bytes())
    local_agent.send({"op": "data"}, b"NEW DATA")
    local_agent.send({"op": "end"})
    reply, _ = local_agent.recv()
    assert reply["error"] == "verify"
    assert (tmp_path / "f.bin").read_bytes() == new
    assert not list((tmp_path / ".fitsync/tmp").iterdir())
    assert local_agent.call({"op": "stat", "path": str(tmp_path / "f.bin")})["size"] == len(new)
    # a damaged recipe is refused before anything is written
    damaged = bytearray(recipe.to_bytes())
    damaged[-20] ^= 1
    req["expected"] = blake3.blake3(new).hexdigest()
    local_agent.send(req, bytes(damaged))
    local_agent.send({"op": "end"})
    assert local_agent.recv()[0]["error"] == "bad"


def test_errors_are_replies_not_crashes(tmp_path, local_agent):
    assert local_agent.call({"op": "stat", "path": str(tmp_path / "nope")})["error"] == "notfound"
    assert local_agent.call({"op": "list", "root": str(tmp_path / "nope")})["error"] == "notfound"
    assert local_agent.call({"op": "frobnicate"})["error"] == "bad"
    assert local_agent.call({"op": "digest", "path": str(tmp_path), "algo": "sha256"})["error"] in ("notfound", "io")
    assert local_agent.call({"op": "digest", "path": __file__, "algo": "nonesuch"})["error"] == "bad"


def test_listing_streams_in_batches(tmp_path, local_agent):
    for i in range(4500):
        (tmp_path / f"d{i % 3}").mkdir(exist_ok=True)
        (tmp_path / f"d{i % 3}" / f"f{i}").write_bytes(b"x" * (i % 7))
    local_agent.send({"op": "list", "root": str(tmp_path)})
    parts = []
    while True:
        reply, _ = local_agent.recv()
        parts.append(reply)
        if "more" not in reply:
            break
    entries = [e for part in parts for e in part["entries"]]
    assert len(parts) >= 3 and len(entries) == 4500
    assert entries == sorted(entries, key=lambda e: e[0].split("/"))


def test_stdlib_only_host_offers_the_stdlib_signature():
    agent = LocalAgent(avoid=("fitsync", "blake3", "xxhash"))
    try:
        assert agent.hello["signature"] == "stdlib"
        assert "blake3" not in agent.hello["hashes"] and "sha256" in agent.hello["hashes"]
    finally:
        agent.close()
    agent = LocalAgent(avoid=("fitsync",))
    try:
        assert agent.hello["signature"] == "stdlib"  # xxhash and blake3 alone do not make a faster signature
    finally:
        agent.close()


def test_the_wire_formats_are_written_once_and_shipped_whole():
    """fitsync/wire.py is both imported by fitsync and sent, as text, inside
    the agent's one file: the layouts cannot drift apart."""
    from importlib import resources

    from fitsync import recipe, signature, wire
    from fitsync.remotes.sftp_agent import agent_payload

    text = resources.files("fitsync").joinpath("wire.py").read_bytes()
    assert text in agent_payload()
    assert agent_mod.SIG_HEADER.format == signature._HEADER.format == wire.SIG_HEADER.format
    assert agent_mod.RECIPE_HEADER.format == recipe._HEADER.format
    for size in (0, 2880, 1 << 20, 1 << 30, 1 << 40):
        assert agent_mod.default_block_size(size) == signature.default_block_size(size)
