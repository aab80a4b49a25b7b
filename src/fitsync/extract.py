"""--extract: unpack downloaded tar archives next to where they landed.

Each ``.tar``, ``.tgz`` or ``.tar.gz`` among the mirrored paths is unpacked
into its own directory, as ``tar xf`` run there would, with three refusals:
a member whose name would leave the destination (absolute, ``..``), a link
(symbolic or hard: it could point anywhere), and a device, FIFO or other
special file. An archive with any such member is refused whole, before a
byte of it is written.

Bounded: an archive whose members add up to more than ``max_bytes`` (by
default 100 times the archive's own size, at least 1 GiB) or number more
than 100,000 is refused, as is a member that would overwrite a file the
mirror itself placed (the run would never converge). A refused archive is a
failure of the run (exit 3); the other archives are unpacked.

Every member is written to a temporary file in the destination's state
directory and renamed into place, with the member's mtime. A re-run skips an
archive whose size and mtime match the record of its last extraction (in
``.fitsync/extracted.json``) when all its members are still there with the
recorded sizes and mtimes; a member that differs is extracted again.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import stat as stat_mod
import tarfile
import zlib

from fitsync.errors import BadInput, UnsafePath
from fitsync.formats.manifest import write_atomically
from fitsync.paths import join_under, safe_relpath
from fitsync.remotes.local import STATE_DIR, LocalRemote, open_state_file, unlink_quietly

ARCHIVE_SUFFIXES = (".tar", ".tgz", ".tar.gz")
STATE_FILE = "extracted.json"
COPY_CHUNK = 4 << 20


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


MAX_MEMBERS = 100_000
RATIO = 100  # unpacked bytes per archive byte allowed by default
FLOOR = 1 << 30  # ... but never less than this


def extract_archives(dst_root: str, relpaths, mirrored=frozenset(), max_bytes: int | None = None,
                     failures: list | None = None) -> list[str]:
    """Unpack the archives among ``relpaths`` (relative to ``dst_root``);
    return the relative paths of the files written or already up to date.
    ``mirrored``: paths the mirror placed, which no member may overwrite.
    A refused archive is appended to ``failures`` ({"path", "reason"}) when
    given (the others are still unpacked), else raised."""
    state = _load_state(dst_root)
    produced: list[str] = []
    for relpath in sorted(p for p in relpaths if is_archive(p)):
        relpath = safe_relpath(relpath)
        archive = join_under(dst_root, relpath)
        st = os.stat(archive)
        record = state.get(relpath)
        if record and _still_extracted(dst_root, record, st):
            produced.extend(m[0] for m in record["members"])
            continue
        try:
            members = extract_one(dst_root, relpath, mirrored, max_bytes or max(RATIO * st.st_size, FLOOR))
        except (BadInput, UnsafePath) as exc:
            if failures is None:
                raise
            failures.append({"path": relpath, "reason": str(exc)})
            continue
        state[relpath] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "members": members}
        _save_state(dst_root, state)
        produced.extend(m[0] for m in members)
    return list(dict.fromkeys(produced))


def extract_one(dst_root: str, relpath: str, mirrored=frozenset(), max_bytes: int = FLOOR) -> list[list]:
    """Unpack one archive into its directory; [[path, size, mtime_ns], ...] of its files."""
    archive = join_under(dst_root, relpath)
    base = os.path.dirname(relpath)
    try:
        with tarfile.open(archive, "r:*") as tar:
            plan = []
            total = 0
            for member in tar:  # headers only: every refusal comes before a byte is written
                plan.append((member, _target(base, member, relpath)))
                total += member.size
                _check_bounds(relpath, len(plan), total, max_bytes)
                if plan[-1][1] in mirrored and member.isreg():
                    raise UnsafePath(f"{relpath}: member {member.name!r} would overwrite {plan[-1][1]}, a file of "
                                     "the mirror itself; refusing to extract the archive")
            return _write_members(LocalRemote(dst_root), tar, plan)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise BadInput(f"{relpath} is not a readable tar archive ({exc}); download it again") from None


def _check_bounds(archive: str, members: int, total: int, max_bytes: int) -> None:
    if members > MAX_MEMBERS:
        raise BadInput(f"{archive} holds more than {MAX_MEMBERS:,} members; refusing to extract it")
    if total > max_bytes:
        raise BadInput(f"{archive} would unpack to more than {max_bytes:,} bytes (a decompression bomb?); "
                       "refusing to extract it; pass --extract-max=SIZE to allow more")


def _target(base: str, member: tarfile.TarInfo, archive: str) -> str:
    if member.issym() or member.islnk():
        raise UnsafePath(f"{archive}: member {member.name!r} is a link; refusing to extract the archive")
    if not (member.isreg() or member.isdir()):
        raise UnsafePath(f"{archive}: member {member.name!r} is a device or special file; refusing to extract the archive")
    name = member.name
    if member.isdir() and set(name.split("/")) <= {".", ""}:
        return base  # the archive's own top directory, "./"
    if name.startswith("/") or name.startswith("\\"):
        raise UnsafePath(f"{archive}: member {name!r} has an absolute path; refusing to extract the archive")
    try:
        inner = safe_relpath(name, what=f"{archive}: member")
    except UnsafePath:
        raise UnsafePath(
            f"{archive}: member {name!r} would be written outside the destination; refusing to extract the archive"
        ) from None
    target = safe_relpath(f"{base}/{inner}" if base else inner)
    if target.split("/", 1)[0] == STATE_DIR:
        # fitsync's own state (lock, partial downloads, this module's record):
        # a member there could lock every later mirror out or poison a resume.
        raise UnsafePath(f"{archive}: member {name!r} would be written into fitsync's state directory "
                         f"{STATE_DIR}/; refusing to extract the archive")
    return target


def _write_members(dst: LocalRemote, tar: tarfile.TarFile, plan: list) -> list[list]:
    """Directories made and files installed from the root's descriptor, one
    directory at a time, never following a symlink (remotes.beneath)."""
    from fitsync.remotes.beneath import open_beneath

    written = []
    try:
        for member, target in plan:
            if member.isdir():
                if target:
                    os.close(open_beneath(dst.root_fd(), target, create=True))
                continue
            written.append(_write_member(dst, tar, member, target))
    finally:
        dst.close()
    return written


def _write_member(dst: LocalRemote, tar: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> list:
    """Unpack one member to an unpredictable temporary in the state directory,
    then install it as mirrored files are: through directory descriptors
    (LocalRemote.install), so that a directory swapped for a symlink while
    the archive is unpacked cannot lead a member outside the tree."""
    final = join_under(dst.root, target)
    mtime_ns = int(member.mtime) * 1_000_000_000
    try:
        st = os.stat(final, follow_symlinks=False)
        if stat_mod.S_ISREG(st.st_mode) and st.st_size == member.size and st.st_mtime_ns == mtime_ns:
            return [target, member.size, mtime_ns]  # already extracted
    except (FileNotFoundError, NotADirectoryError):
        pass
    tmp = os.path.join(dst.state_dir("tmp"), f"extract-{secrets.token_hex(8)}")
    try:
        source = tar.extractfile(member)
        with open_state_file(tmp, "wb") as out:
            written = 0
            for chunk in iter(lambda: source.read(COPY_CHUNK), b""):
                out.write(chunk)
                written += len(chunk)
        if written != member.size:
            raise BadInput(f"member {member.name!r} is truncated ({written} of {member.size} bytes)")
        dst.install(tmp, target, mtime_ns / 1e9, mode=0o644 | (member.mode & 0o111))
    except BaseException:
        unlink_quietly(tmp)
        raise
    return [target, member.size, mtime_ns]


def _still_extracted(dst_root: str, record: dict, st: os.stat_result) -> bool:
    if record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
        return False
    for path, size, mtime_ns in record.get("members", []):
        try:
            m = os.stat(join_under(dst_root, path), follow_symlinks=False)
        except (FileNotFoundError, UnsafePath):
            return False
        if m.st_size != size or m.st_mtime_ns != mtime_ns:
            return False
    return True


def extracted_paths(dst_root: str) -> set[str]:
    """Files --extract put in ``dst_root``: not in the source, so --delete must spare them."""
    return {m[0] for record in _load_state(dst_root).values() for m in record.get("members", [])}


def _state_path(dst_root: str) -> str:
    return os.path.join(dst_root, STATE_DIR, STATE_FILE)


def _load_state(dst_root: str) -> dict:
    try:
        with open(_state_path(dst_root), encoding="utf-8") as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (FileNotFoundError, ValueError):
        return {}  # no record (or a damaged one): archives are simply checked again


def _save_state(dst_root: str, state: dict) -> None:
    os.makedirs(os.path.join(dst_root, STATE_DIR), exist_ok=True)
    write_atomically(_state_path(dst_root), lambda out: json.dump(state, out, indent=1, sort_keys=True))
