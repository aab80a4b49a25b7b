"""Hostile input to fitsync's parsers (issue 9, CI subset): hypothesis draws a
few thousand inputs per parser (stress/fuzz_parsers.py draws 100,000+); only
each parser's documented errors may come out -- never another exception, a
hang or a huge allocation. The targets and strategies are in
stress/fuzz_targets.py. Deterministic reproducers of each defect found are
below the fuzz tests; they are strict xfails until the owner's fix lands.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))

import fuzz_targets  # noqa: E402
from fuzz_targets import TARGETS  # noqa: E402

EXAMPLES = int(os.environ.get("FITSYNC_FUZZ_EXAMPLES", "2000"))

# Targets whose parser has an open defect: the fuzz test is a strict xfail
# until it is fixed (then it passes, and strict xfail turns that into a
# failure to remove the mark).
OPEN_DEFECTS = {
}


# Open defects that 2,000 inputs find only in some test orders (hypothesis'
# derandomized inputs still depend on what ran before): not strict, so CI stays
# deterministic; their deterministic reproducers below are strict.
SOMETIMES_FOUND: dict[str, str] = {}


def _fuzz_case(name):
    marks = []
    if name in OPEN_DEFECTS:
        marks = [pytest.mark.xfail(strict=True, reason=OPEN_DEFECTS[name])]
    elif name in SOMETIMES_FOUND:
        marks = [pytest.mark.xfail(strict=False, reason=SOMETIMES_FOUND[name])]
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_fuzz_case(n) for n in TARGETS])
def test_parser_raises_only_documented_errors(name):
    target, strategy = TARGETS[name]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(data):
        target(data)

    check()


# -- reproducers of the defects fuzzing found ------------------------------------------------

HEADER = b'{"format": "fitsync-manifest", "version": 1}\n'


@pytest.mark.parametrize("line", [b"[" * 100_000, b'{"path": "a", "size": ' + b"9" * 5000 + b"}"], ids=["deep", "huge-int"])
def test_manifest_with_deep_or_huge_json_is_bad_input(line):
    from fitsync.errors import BadInput
    from fitsync.formats.manifest import parse_manifest_bytes

    with pytest.raises(BadInput):
        parse_manifest_bytes(HEADER + line + b"\n", "m")


def test_manifest_digest_must_be_64_plain_hex_digits():
    from fitsync.errors import BadInput
    from fitsync.formats.manifest import parse_manifest_bytes

    for digest in ("0x" + "0" * 62, "0_" * 32, " +" + "a" * 62):
        with pytest.raises(BadInput):
            parse_manifest_bytes(HEADER.replace(b"1}", b'1, "files": 1}')
                                 + json.dumps({"path": "a", "size": 1, "blake3": digest}).encode() + b"\n", "m")


@pytest.mark.parametrize("blocks", [{}, [], 7], ids=["object", "list", "number"])
def test_manifest_blocks_field_of_the_wrong_type_is_bad_input(blocks):
    from fitsync.errors import BadInput
    from fitsync.formats.manifest import parse_manifest_bytes

    record = {"path": "a", "size": 1, "mtime": 0, "blake3": "0" * 64, "blocks": blocks}
    manifest = parse_manifest_bytes(HEADER.replace(b"1}", b'1, "files": 1}') + json.dumps(record).encode() + b"\n", "m")
    with pytest.raises(BadInput):
        manifest.entries["a"].signature()


def _fits_with(card: str) -> bytes:
    cards = ["SIMPLE  =                    T", card, "NAXIS   =                    0", "END"]
    data = b"".join(c.ljust(80).encode() for c in cards)
    return data + b" " * (-len(data) % 2880)


def test_fits_header_with_infinite_bitpix_is_a_structure_error():
    from fitsync import fits

    data = _fits_with("BITPIX  =                1e400")
    read = lambda o, n: data[o:o + n]  # noqa: E731
    with pytest.raises(fits.FitsStructureError):
        fits.walk_hdus(read, len(data))
    assert fits.segment_boundaries(read, len(data)) == [0]


def test_one_damaged_fits_header_does_not_stop_a_mirror(tmp_path):
    from harness import run_fitsync, write_file

    src = tmp_path / "src"
    write_file(src / "bad.fits", _fits_with("BITPIX  =                  INF"), 1_700_000_000.0)
    write_file(src / "good.txt", b"good", 1_700_000_000.0)
    proc = run_fitsync("mirror", src, tmp_path / "dst")
    assert "Traceback" not in proc.stderr, proc.stderr[-400:]
    assert (tmp_path / "dst/good.txt").read_bytes() == b"good"


@pytest.mark.parametrize("text", ["a = " + "[" * 50_000, "e = " + "9" * 5000], ids=["deep", "huge-int"])
def test_remotes_config_with_deep_or_huge_values_is_bad_input(tmp_path, text):
    from fitsync import config
    from fitsync.errors import BadInput

    path = tmp_path / "remotes.toml"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(BadInput):
        config.load_remotes(str(path))


def _frame(header) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw


@pytest.mark.parametrize("frame", [_frame(None), _frame({"n": [1]}), _frame({"op": "x", "n": 1 << 40})],
                         ids=["null-header", "list-n", "huge-n"])
def test_agent_frame_reader_refuses_malformed_frames(frame):
    from fitsync.agent import Channel

    chan = Channel(io.BufferedReader(fuzz_targets.PipeRaw(frame)), io.BytesIO())
    with fuzz_targets.guarded():
        with pytest.raises((EOFError, ValueError)):
            chan.recv()


@pytest.mark.parametrize("frame", [_frame(None), _frame([]), _frame({"n": -1}) + b"rest"],
                         ids=["null-header", "list-header", "negative-n"])
def test_client_frame_reader_refuses_malformed_replies(frame):
    from fitsync.errors import FitsyncError
    from fitsync.remotes.sftp_agent import AgentClient

    client = AgentClient.__new__(AgentClient)
    client.rfile = fuzz_targets.LiveChannel(frame)
    with pytest.raises((EOFError, ValueError, FitsyncError)):
        client.recv()
