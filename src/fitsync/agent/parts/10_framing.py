"""fitsync's remote agent: a self-contained, stdlib-only module run over SSH.

The client (fitsync.remotes.sftp) sends this file's text over an exec channel
to ``python3`` on the remote host, where it is cached under
~/.cache/fitsync/agent-<version>-<sha256 prefix>.py and verified by its
SHA-256 before every use (see BOOTSTRAP). It then answers framed requests on
stdin/stdout so that listing, digests, block signatures and patching happen
next to the data, without moving it.

Framing: each message is a 4-byte big-endian length, a UTF-8 JSON header of
that length, then ``header["n"]`` raw bytes when the header has "n".
Requests are answered strictly in order, so a client may pipeline them.
A reply is {"ok": ...} or {"error": kind, "msg": text}; streamed replies send
{"more": ...} frames before the final one.

Hashes: blake3 and xxhash are used when importable; otherwise the client
and agent agree on hashlib algorithms during "hello" (see fitsync.remotes.sftp).
Nothing here may import fitsync: the remote host need not have it. The wire
formats (signature and recipe layouts, the STDLIB suite's ids, the block-size
rule) are fitsync/wire.py's own text, joined into this file after this part;
the few lines of FITS header walking that block layouts need are repeated
here (tests/test_sftp_agent.py holds them equal to fitsync.fits.segment_boundaries).
"""

import errno
import hashlib
import json
import os
import stat
import struct
import sys

AGENT_PROTOCOL = 1
READ_CHUNK = 4 << 20
STATE_DIR = ".fitsync"
# FRAME, MAX_FRAME_HEADER, MAX_FRAME_BODY and parse_frame_header: fitsync/wire.py,
# joined into this file after this part.
READ_PIECE = 4 << 20


# -- framing ----------------------------------------------------------------

class Channel:
    def __init__(self, rfile, wfile):
        self.rfile = rfile
        self.wfile = wfile

    def read_exact(self, n):
        # In pieces: a hostile length must not make us allocate it up front.
        parts = []
        while n > 0:
            piece = self.rfile.read(min(n, READ_PIECE))
            if not piece:
                raise EOFError("client went away")
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)

    def recv(self):
        """(header dict, body bytes or None); None at a clean end of input."""
        raw = self.rfile.read(FRAME.size)
        if not raw:
            return None, None
        if len(raw) != FRAME.size:
            raise EOFError("truncated frame")
        (length,) = FRAME.unpack(raw)
        if length > MAX_FRAME_HEADER:
            raise ValueError("frame header too large")
        header = parse_frame_header(self.read_exact(length))
        body = self.read_exact(header["n"]) if "n" in header else None
        return header, body

    def send(self, header, body=None, flush=True):
        if body is not None:
            header["n"] = len(body)
        raw = json.dumps(header, separators=(",", ":")).encode()
        self.wfile.write(FRAME.pack(len(raw)) + raw)
        if body is not None:
            self.wfile.write(body)
        if flush:
            self.wfile.flush()


class AgentError(Exception):
    def __init__(self, kind, msg):
        super().__init__(msg)
        self.kind = kind


def _os_error(exc, path):
    if isinstance(exc, FileNotFoundError):
        return AgentError("notfound", "%s does not exist" % path)
    if isinstance(exc, PermissionError):
        return AgentError("permission", "permission denied: %s" % path)
    if isinstance(exc, IsADirectoryError):
        return AgentError("notfound", "%s is a directory, not a file" % path)
    return AgentError("io", "%s: %s" % (path, exc.strerror or exc))
