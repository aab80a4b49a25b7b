"""Release manifests: a tree's files, sizes, mtimes and BLAKE3 digests.

The default format is JSON Lines (documented in docs/manifest.md): a header
object, then one object per file. Other formats (b3sum, sha256sum, BagIt)
exist so that tools other than fitsync can check a tree.
"""

from __future__ import annotations

import json
import os
import re
import time
from json.encoder import encode_basestring
from typing import IO, Iterable

from fitsync import __version__
from fitsync.errors import BadInput, NotFound
from fitsync.paths import safe_relpath

FORMAT_NAME = "fitsync-manifest"
FORMAT_VERSION = 2  # the newest this fitsync reads; it writes 1 whenever the totals fit in the header
# A manifest of at most this many files (with --blocks, whose lines are long,
# BLOCKS_HEADER_TOTALS_UP_TO) is written as always: version 1, its totals in
# the header. A longer one is written as it is hashed, in bounded memory:
# version 2, the totals on a trailer line ({"end": FORMAT_NAME, ...}).
HEADER_TOTALS_UP_TO = 100_000
BLOCKS_HEADER_TOTALS_UP_TO = 5_000
DEFAULT_NAME = "fitsync-manifest.jsonl"
MAX_LINE = 64 << 20
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")  # a line with block signatures of a huge file stays far below this


# ManifestEntry and Manifest are plain classes, not dataclasses: importing
# dataclasses (and inspect with it) would cost every manifest run ~10 ms.

class ManifestEntry:
    __slots__ = ("path", "size", "mtime", "blake3", "extra")

    def __init__(self, path: str, size: int, mtime: float, blake3: str, extra: dict | None = None):
        self.path = path
        self.size = size
        self.mtime = mtime
        self.blake3 = blake3
        self.extra = {} if extra is None else extra  # "fits", "blocks" and future fields

    def _fields(self) -> tuple:
        return (self.path, self.size, self.mtime, self.blake3, self.extra)

    def __eq__(self, other) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # mutable, as the dataclass it replaces

    def __repr__(self) -> str:
        return (f"ManifestEntry(path={self.path!r}, size={self.size!r}, mtime={self.mtime!r}, "
                f"blake3={self.blake3!r}, extra={self.extra!r})")

    def to_json(self) -> dict:
        record = {"path": self.path, "size": self.size, "mtime": self.mtime, "blake3": self.blake3}
        record.update(self.extra)
        return record

    def signature(self):
        """The block signature carried by a manifest written with --blocks, or None."""
        blob = self.extra.get("blocks")
        if blob is None:
            return None
        import base64

        from fitsync.signature import Signature

        if not isinstance(blob, str):
            raise BadInput(f"manifest entry {self.path}: 'blocks' must be a base64 string")
        try:
            raw = base64.b64decode(blob, validate=True)
        except ValueError:
            raise BadInput(f"manifest entry {self.path}: 'blocks' is not valid base64") from None
        return Signature.from_bytes(raw)


class Manifest:
    __slots__ = ("header", "entries")

    def __init__(self, header: dict, entries: dict[str, ManifestEntry]):
        self.header = header
        self.entries = entries

    def __eq__(self, other) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.header, self.entries) == (other.header, other.entries)

    __hash__ = None

    def __repr__(self) -> str:
        return f"Manifest(header={self.header!r}, entries={self.entries!r})"

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries.values())


def _header(files: int, size: int, blocks: bool) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": 1,  # totals in the header (streamed_header_line writes 2)
        "tool": f"fitsync {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_created())),
        "files": files,
        "bytes": size,
        "digest": "blake3",
        "blocks": blocks,
    }


def _created() -> float:
    """Now, or SOURCE_DATE_EPOCH (the reproducible-builds convention): two
    manifests of the same tree are then the same bytes, wherever made."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    return float(epoch) if epoch.isdigit() else time.time()


def header_line(files: int, size: int, blocks: bool) -> str:
    """The first line of a JSONL manifest of ``files`` files of ``size`` bytes in all."""
    return json.dumps(_header(files, size, blocks), sort_keys=True) + "\n"


def streamed_header_line(blocks: bool) -> str:
    """The first line of a manifest whose totals follow on its trailer line (version 2)."""
    header = _header(0, 0, blocks)
    del header["files"], header["bytes"]
    header["version"] = 2
    return json.dumps(header, sort_keys=True) + "\n"


def trailer_line(files: int, size: int) -> str:
    """The last line of a version 2 manifest: its totals, which also mark it complete."""
    return json.dumps({"bytes": size, "end": FORMAT_NAME, "files": files}, sort_keys=True) + "\n"


def totals_in_header(files: int, blocks: bool) -> bool:
    """Whether a manifest of ``files`` files carries its totals in its header
    (version 1): the rule single-process and cluster writers share, so that
    both write the same bytes."""
    return files <= header_totals_limit(blocks)


def header_totals_limit(blocks: bool) -> int:
    return BLOCKS_HEADER_TOTALS_UP_TO if blocks else HEADER_TOTALS_UP_TO


def jsonl_body(entries: list[ManifestEntry]) -> str:
    """The lines after the header, one per entry."""
    from fitsync._walk import jsonl_lines

    return jsonl_lines(entries, _jsonl_line)  # _jsonl_line's text, formatted in C


def write_jsonl(out: IO[str], entries: list[ManifestEntry], blocks: bool = False) -> None:
    writer = JsonlWriter(out, blocks)
    writer.add(entries)
    writer.close()


class JsonlWriter:
    """Writes a JSONL manifest from batches of entries, in path order. Lines
    are held back until the manifest is known to be short enough for its
    totals to lead (totals_in_header); past that, the header goes out without
    them and every later batch is written as it comes, the totals trailing."""

    def __init__(self, out: IO[str], blocks: bool):
        self.out, self.blocks = out, blocks
        self.files = self.bytes = 0
        self.held: list = []  # body text not yet written, while the header waits
        self.streaming = False

    def add(self, entries: list[ManifestEntry]) -> None:
        self.files += len(entries)
        self.bytes += sum(e.size for e in entries)
        body = jsonl_body(entries)
        if self.streaming:
            self.out.write(body)
            return
        self.held.append(body)
        if not totals_in_header(self.files, self.blocks):
            self.streaming = True
            self.out.write(streamed_header_line(self.blocks))
            self._release()

    def close(self) -> None:
        if self.streaming:
            self.out.write(trailer_line(self.files, self.bytes))
            return
        self.out.write(header_line(self.files, self.bytes, self.blocks))
        self._release()

    def _release(self) -> None:
        for body in self.held:
            self.out.write(body)
        self.held = []


def _jsonl_line(entry: ManifestEntry) -> str:
    if entry.extra:
        return json.dumps(entry.to_json(), sort_keys=True, ensure_ascii=False) + "\n"
    # The common line, formatted directly: the same JSON (sorted keys; the
    # path as json.dumps(path, ensure_ascii=False) gives it) in a tenth of the time.
    return (f'{{"blake3": "{entry.blake3}", "mtime": {entry.mtime!r}, "path": {encode_basestring(entry.path)}, '
            f'"size": {entry.size}}}\n')


def write_b3sum(out: IO[str], entries: Iterable[ManifestEntry]) -> None:
    """Lines ``b3sum --check`` accepts: ``<hex>  <path>``."""
    for entry in entries:
        out.write(f"{entry.blake3}  {_checkable_name(entry.path)}\n")


def write_hashlist(out: IO[str], entries: Iterable[ManifestEntry], digests: dict[str, str]) -> None:
    """Lines ``sha256sum -c`` (or md5sum, sha512sum) accepts."""
    for entry in entries:
        out.write(f"{digests[entry.path]}  {_checkable_name(entry.path)}\n")


def _checkable_name(path: str) -> str:
    # coreutils and b3sum cannot express a newline or backslash in a name
    # without their escape syntax; safe_relpath already refuses those.
    return path


def write_atomically(path: str, write) -> None:
    """Run ``write(stream)`` into a temporary file beside ``path`` and rename it.

    A ``path`` that is not a regular file (/dev/null, /dev/stdout, a FIFO) is
    written directly: renaming over it would replace the device or pipe."""
    import stat
    import tempfile

    from fitsync.errors import UsageError

    path = os.path.expanduser(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = stat.S_IFREG
    if stat.S_ISDIR(mode):
        raise UsageError(f"{path} is a directory; give the name of a file to write")
    if not stat.S_ISREG(mode):
        with open(path, "w", encoding="utf-8", newline="\n") as out:
            write(out)
        return
    directory = os.path.dirname(os.path.abspath(path)) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fitsync-manifest-", dir=directory)
    except FileNotFoundError:
        raise UsageError(f"cannot write {path}: the directory {directory} does not exist; create it first") from None
    except PermissionError:
        raise UsageError(f"cannot write {path}: the directory {directory} is not writable") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            write(out)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        from fitsync.remotes.local import unlink_quietly

        unlink_quietly(tmp)
        raise


# -- reading --------------------------------------------------------------

def read_manifest(source) -> Manifest:
    """Parse a JSON Lines manifest from a path or a text stream.

    Every error names the line: a malformed manifest is bad input (exit 2),
    never a traceback.
    """
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        try:
            with open(name, encoding="utf-8") as stream:
                return _parse(stream, name)
        except FileNotFoundError:
            raise NotFound(f"manifest {name} does not exist") from None
        except UnicodeDecodeError:
            raise BadInput(f"manifest {name} is not UTF-8 text") from None
    return _parse(source, getattr(source, "name", "<manifest>"))


def load_manifest(path: str | None, verify_key: str | None = None) -> Manifest | None:
    """The manifest file ``path`` (None: none), its Ed25519 signature checked
    first when ``verify_key`` is given."""
    if path is None:
        return None
    if os.path.isdir(path):
        from fitsync.errors import UsageError

        raise UsageError(f"manifest {path} is a directory; give the manifest file (e.g. {path}/{DEFAULT_NAME})")
    if verify_key:
        from fitsync.signing import verify_manifest_file

        verify_manifest_file(path, verify_key)
    return read_manifest(path)


def parse_manifest_bytes(data: bytes, name: str) -> Manifest:
    import io

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"manifest {name} is not UTF-8 text") from None
    return _parse(io.StringIO(text), name)


def _parse(stream, name: str) -> Manifest:
    header = trailer = None
    entries: dict[str, ManifestEntry] = {}
    for lineno, record in _records(stream, name):
        if trailer is not None:
            raise BadInput(f"manifest {name} line {lineno}: a line after the trailer; the manifest was edited")
        if header is None:
            header = _check_header(record, name, lineno)
        elif "end" in record and "path" not in record:
            trailer = _check_trailer(record, header, name, lineno)
        else:
            entry = _entry_from(record, name, lineno)
            if entry.path in entries:
                raise BadInput(f"manifest {name} line {lineno}: duplicate path {entry.path!r}")
            entries[entry.path] = entry
    if header is None:
        raise BadInput(f"manifest {name} is empty: no header line")
    if header["version"] >= 2:
        if trailer is None:
            raise BadInput(f"manifest {name} has no trailer line: it is truncated; write it again")
        header = {**header, "files": trailer["files"], "bytes": trailer["bytes"]}
    declared = header.get("files")
    if isinstance(declared, int) and declared != len(entries):
        raise BadInput(
            f"manifest {name} declares {declared} files but lists {len(entries)}: it is truncated or edited"
        )
    return Manifest(header, entries)


def _records(stream, name: str):
    """(line number, JSON object) of each non-empty line."""
    # Each line is read bounded (readline with a limit): an endless line is
    # refused after MAX_LINE characters instead of being held whole first.
    for lineno, line in enumerate(iter(lambda: stream.readline(MAX_LINE + 1), ""), 1):
        if len(line) > MAX_LINE:
            raise BadInput(f"manifest {name} line {lineno}: longer than {MAX_LINE >> 20} MiB; this is not a "
                           "fitsync manifest")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            reason = getattr(exc, "msg", exc.__class__.__name__)
            raise BadInput(f"manifest {name} line {lineno}: not valid JSON ({reason})") from None
        if not isinstance(record, dict):
            raise BadInput(f"manifest {name} line {lineno}: expected a JSON object")
        yield lineno, record


def _check_trailer(record: dict, header: dict, name: str, lineno: int) -> dict:
    where = f"manifest {name} line {lineno}"
    if header["version"] < 2 or record.get("end") != FORMAT_NAME:
        raise BadInput(f"{where}: a trailer line in a version {header['version']} manifest; it was edited")
    for key in ("files", "bytes"):
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadInput(f"{where}: the trailer's {key!r} must be a non-negative integer")
    return record


def _check_header(record: dict, name: str, lineno: int) -> dict:
    if record.get("format") != FORMAT_NAME:
        raise BadInput(f"manifest {name} line {lineno}: not a fitsync manifest header (format is missing)")
    version = record.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise BadInput(
            f"manifest {name} line {lineno}: format version {version!r} is not supported "
            f"(this fitsync reads versions 1 to {FORMAT_VERSION}); upgrade fitsync"
        )
    return record


def _entry_from(record: dict, name: str, lineno: int) -> ManifestEntry:
    where = f"manifest {name} line {lineno}"
    path = record.get("path")
    size = record.get("size")
    mtime = record.get("mtime", 0.0)
    digest = record.get("blake3")
    if not isinstance(path, str):
        raise BadInput(f"{where}: 'path' is missing or not a string")
    try:
        path = safe_relpath(path, what="manifest path")
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadInput(f"{where}: 'size' must be a non-negative integer")
    if not isinstance(mtime, (int, float)) or isinstance(mtime, bool):
        raise BadInput(f"{where}: 'mtime' must be a number")
    if not isinstance(digest, str) or not _is_hex(digest):
        raise BadInput(f"{where}: 'blake3' must be 64 hex digits")
    extra = {k: v for k, v in record.items() if k not in ("path", "size", "mtime", "blake3")}
    return ManifestEntry(path, size, float(mtime), digest.lower(), extra)


def _is_hex(text: str) -> bool:
    return _HEX64.fullmatch(text) is not None


# -- building ---------------------------------------------------------------
