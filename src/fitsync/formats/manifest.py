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
from operator import attrgetter
from typing import IO, Iterable

from fitsync import __version__
from fitsync.errors import BadInput, NotFound
from fitsync.paths import safe_relpath

FORMAT_NAME = "fitsync-manifest"
FORMAT_VERSION = 1
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
        "version": FORMAT_VERSION,
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


def jsonl_body(entries: list[ManifestEntry]) -> str:
    """The lines after the header, one per entry."""
    from fitsync._walk import jsonl_lines

    return jsonl_lines(entries, _jsonl_line)  # _jsonl_line's text, formatted in C


def write_jsonl(out: IO[str], entries: list[ManifestEntry], blocks: bool = False) -> None:
    out.write(header_line(len(entries), sum(e.size for e in entries), blocks))
    out.write(jsonl_body(entries))


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
    header = None
    entries: dict[str, ManifestEntry] = {}
    lineno = 0
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
        if header is None:
            header = _check_header(record, name, lineno)
            continue
        entry = _entry_from(record, name, lineno)
        if entry.path in entries:
            raise BadInput(f"manifest {name} line {lineno}: duplicate path {entry.path!r}")
        entries[entry.path] = entry
    if header is None:
        raise BadInput(f"manifest {name} is empty: no header line")
    declared = header.get("files")
    if isinstance(declared, int) and declared != len(entries):
        raise BadInput(
            f"manifest {name} declares {declared} files but lists {len(entries)}: it is truncated or edited"
        )
    return Manifest(header, entries)


def _check_header(record: dict, name: str, lineno: int) -> dict:
    if record.get("format") != FORMAT_NAME:
        raise BadInput(f"manifest {name} line {lineno}: not a fitsync manifest header (format is missing)")
    version = record.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise BadInput(
            f"manifest {name} line {lineno}: format version {version!r} is not supported "
            f"(this fitsync reads version {FORMAT_VERSION}); upgrade fitsync"
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

def build_entries(remote, entries, *, blocks: bool = False, fits_fields: bool = True, jobs: int | None = None,
                  on_done=None, also: tuple = ()) -> tuple[list[ManifestEntry], dict[str, str]]:
    """Hash every file of ``entries`` on ``remote``: (manifest entries sorted by path, errors).

    With ``blocks`` each file's block signature is computed in the same read
    as its digest (the signature carries the whole-file BLAKE3). ``also``
    names more digests for each line (hashes.ALSO), computed in the same
    read as the BLAKE3 (with ``blocks``, in a second one).
    """
    from fitsync.remotes.base import Capability
    from fitsync.scan import for_each_file

    local = Capability.LOCAL in remote.capabilities
    if not blocks and not also and remote.hashes_in_bulk:
        return _build_in_bulk(remote, entries, fits_fields, jobs, on_done)

    def work(entry):
        extra, fits_report, others = {}, None, {}
        if blocks:
            sig = _signature_for(remote, entry.path, local)
            digest = sig.digest.hex()
            import base64

            extra["blocks"] = base64.b64encode(sig.to_bytes()).decode("ascii")
            if fits_fields and local:
                fits_report = _fits_report(remote.local_path(entry.path), entry.path)
            if also:
                others = _read_into(remote, entry.path, local, also)
        elif fits_fields and local:
            fits_report, digest, others = _digest_with_fits(remote.local_path(entry.path), entry.path, also)
        elif also:
            others = _read_into(remote, entry.path, local, ("blake3", *also))
            digest = others.pop("blake3")
        else:
            digest = remote.digest(entry.path)
        if fits_report is not None:
            from fitsync.fitsaudit import manifest_fields

            extra["fits"] = manifest_fields(fits_report)
        extra.update(others)
        return ManifestEntry(entry.path, entry.size, entry.mtime, digest, extra)

    results, errors = [], {}
    _collect(for_each_file(entries, work, jobs=jobs), results, errors, on_done)
    results.sort(key=lambda e: e.path)
    return results, errors


def _read_into(remote, path: str, local: bool, algos: tuple) -> dict:
    """{algo: hex digest} of one file, read once (streamed from a remote)."""
    from fitsync.hashes import TeeHasher, hash_file_into, hash_stream_into

    tee = TeeHasher(algos)
    if local:
        hash_file_into(remote.local_path(path), tee)
    else:
        with remote.open_read(path) as stream:
            hash_stream_into(stream, tee)
    return tee.hexdigests()


def _collect(outcomes, results: list, errors: dict, on_done) -> None:
    """Sort for_each_file's (entry, manifest entry, error) outcomes into
    ``results`` and ``errors``, reporting each entry to ``on_done``."""
    for entry, manifest_entry, error in outcomes:
        if error is None:
            results.append(manifest_entry)
        else:
            errors[entry.path] = error
        if on_done:
            on_done(entry)


def _build_in_bulk(remote, entries, fits_fields: bool, jobs: int | None, on_done):
    """build_entries for a plain local tree: files hashed in batches
    (scan.hash_local_files); FITS files, known by name or by their first
    bytes, then go one by one through the FITS checker (one read for both)."""
    from fitsync.fitsnames import FITS_MAGIC, looks_like_fits
    from fitsync.scan import for_each_file, hash_local_files

    entries = list(entries)
    fits = [e for e in entries if looks_like_fits(e.path, b"")] if fits_fields else []
    named = {e.path for e in fits}
    plain = [e for e in entries if e.path not in named] if named else entries
    digests, errors, fits_content = hash_local_files(remote, plain, starts_with=FITS_MAGIC if fits_fields else b"",
                                                     jobs=jobs)
    again = {e.path for e in fits_content}  # FITS content under another name: checked below
    done = [e for e in plain if e.path not in again] if again else plain
    if errors:
        done = [e for e in done if e.path in digests]
    results = [ManifestEntry(e.path, e.size, e.mtime, digests[e.path]) for e in done]
    if on_done:
        for entry in plain:
            if entry.path not in again:
                on_done(entry)

    def check(entry):
        from fitsync.fitsaudit import audit_and_digest, manifest_fields

        report, digest = audit_and_digest(remote.local_path(entry.path), display_path=entry.path)
        extra = {"fits": manifest_fields(report)} if report is not None else {}
        return ManifestEntry(entry.path, entry.size, entry.mtime, digest, extra)

    _collect(for_each_file(fits + fits_content, check, jobs=jobs), results, errors, on_done)
    results.sort(key=attrgetter("path"))
    return results, errors


def _digest_with_fits(full: str, name: str, also: tuple = ()):
    """(FITS report or None, digest, {also: digest}) in one read for a FITS
    file; a file that is not FITS by its name is hashed directly and only
    re-read as FITS if its first bytes say it is one after all."""
    from fitsync.fitsnames import FITS_MAGIC, looks_like_fits
    from fitsync.hashes import TeeHasher, digest_and_head, hash_file_into

    if not looks_like_fits(name, b""):
        if also:
            tee = TeeHasher(("blake3", *also))
            head = hash_file_into(full, tee, head=len(FITS_MAGIC))
            found = tee.hexdigests()
            digest = found.pop("blake3")
        else:
            (digest, head), found = digest_and_head(full, head=len(FITS_MAGIC)), {}
        if not head.startswith(FITS_MAGIC):
            return None, digest, found
    from fitsync.fitsaudit import audit_and_digest

    tee = TeeHasher(("blake3", *also)) if also else None
    report, digest = audit_and_digest(full, display_path=name, hasher=tee)
    others = {a: d for a, d in tee.hexdigests().items() if a != "blake3"} if tee is not None else {}
    return report, digest, others


def _signature_for(remote, path: str, local: bool):
    if local:
        from fitsync.signature import signature_of_file

        return signature_of_file(remote.local_path(path))
    return remote.block_signature(path)


def _fits_report(local_path: str, name: str):
    """The FITS report of a FITS candidate, None for other files."""
    from fitsync import fitsaudit

    with open(local_path, "rb") as f:
        head = f.read(16)
    if not fitsaudit.is_fits_candidate(name, head):
        return None
    return fitsaudit.check_file(local_path, display_path=name)
