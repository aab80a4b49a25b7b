"""``--inplace``: the engine's side of updates in place, and their recovery.

fitsync.inplace writes the changed ranges under an undo journal; this module
decides where the journal lives, what its header records, when the result
counts (verified against the source's digest, the source unchanged, a FITS
file complete), and rolls back whatever does not. ``recover`` finishes the
journals a crash left behind: every mirror into a local destination runs
it once it holds the destination's lock, and ``fitsync recover`` on demand.

What other readers see: like ``rsync --inplace``, a program reading the
file during the update may see a mix of old and new bytes (docs/reliability.md).
Unlike rsync, nothing stays mixed after a crash.
"""

from __future__ import annotations

import logging
import os
import stat as stat_mod

from fitsync import inplace
from fitsync.recipe import Recipe
from fitsync.engine.transfer import Moved, _local_source
from fitsync.engine.update import IN_PLACE
from fitsync.errors import FitsyncError, TransferFailed, UsageError
from fitsync.mapped import mapped_file
from fitsync.paths import safe_relpath
from fitsync.remotes.base import Capability
from fitsync.remotes.local import STATE_DIR, LocalRemote
from fitsync.remotes.statefiles import unlink_state_file

log = logging.getLogger("fitsync")

JOURNALS = "inplace"  # under DST/.fitsync/

# File systems whose fsync does not promise that the journal is on stable
# storage before the file's own bytes are overwritten (network and
# host-shared file systems, most FUSE ones): an update in place there could
# not be rolled back after a crash.
UNSAFE_FOR_INPLACE = ("9p", "cifs", "smb3", "smbfs", "vboxsf", "vmhgfs", "ncpfs", "davfs", "afs")


def inplace_refusal(root: str) -> str | None:
    """Why ``--inplace`` must not run on the file system holding ``root``, or None."""
    fstype = _filesystem_type(root)
    if fstype is None:
        return None
    if fstype in UNSAFE_FOR_INPLACE or fstype.startswith("fuse"):
        return (f"--inplace refuses {root}: it is on a {fstype} file system, where fsync does not promise the "
                "undo journal reaches the disk before the file is overwritten; run without --inplace")
    return None


def _filesystem_type(path: str) -> str | None:
    """The type of the mount holding ``path``, from /proc/self/mountinfo."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, fstype = "", None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ")
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, fstype = mount, right.split()[0]
    return fstype


def journal_path(dst: LocalRemote, path: str) -> str:
    import blake3

    return os.path.join(dst.state_dir(JOURNALS), blake3.blake3(path.encode("utf-8", "surrogateescape")).hexdigest()[:32]
                        + ".journal")


def update_in_place(build, fits_check: bool) -> Moved:
    """Apply ``build`` (an engine.update._Build) to the destination file itself."""
    dst, item = build.dst, build.item
    rel = safe_relpath(item.path)
    jpath = journal_path(dst, rel)
    if os.path.lexists(jpath):  # an earlier attempt's: the file must be whole before it is read
        recover_journal(dst, jpath)
    fd = _open_for_update(dst, rel)
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise TransferFailed(f"{dst.path_of(item.path)} is not a regular file; cannot update it in place")
        _refuse_other_file_system(dst, item.path, st)
        with mapped_file(fd, what=dst.path_of(item.path)) as basis_map:
            recipe = build.recipe_for(basis_map)
        journal = inplace.Journal(jpath, _header(rel, st, recipe, item, *_new_attributes(build, st)))
        try:
            _write_and_check(fd, build, recipe, journal, st.st_size, fits_check)
        except BaseException:
            journal.close()
            _roll_back(fd, jpath)
            raise
        journal.close()
        unlink_state_file(jpath)
    finally:
        os.close(fd)
    build.progress.finish()
    return Moved(transferred=build.fetched, reused=build.reused, built=IN_PLACE)


def _open_for_update(dst: LocalRemote, rel: str) -> int:
    """The existing file, opened for writing without following a symlink and
    without blocking (a FIFO or a device there is refused, never waited on)."""
    from fitsync.remotes.beneath import open_file_beneath

    try:
        return open_file_beneath(dst.root_fd(), rel, os.O_RDWR | os.O_NONBLOCK)
    except PermissionError:
        raise TransferFailed(f"cannot update {dst.path_of(rel)} in place: permission denied") from None


def _refuse_other_file_system(dst: LocalRemote, path: str, st: os.stat_result) -> None:
    """A file on another mount below the root (a FUSE mount inside DST) is
    judged by its own file system."""
    if st.st_dev != os.fstat(dst.root_fd()).st_dev:
        reason = inplace_refusal(os.path.dirname(dst.path_of(path)))
        if reason:
            raise TransferFailed(reason)


def _write_and_check(fd: int, build, recipe: Recipe, journal, old_size: int, fits_check: bool) -> None:
    """Write, verify, check, give the new mode, owner and mtime, sync; only
    then is the journal marked done (recovery then keeps the new version)."""
    inplace.write_in_place(fd, recipe, build.read_source, journal, old_size)
    got = inplace.file_digest_of(fd, recipe.target_size, recipe.new_hasher())
    if got != recipe.digest:
        inplace.raise_mismatch(build.item.path, got, recipe.digest)
    build.check_result(f"/proc/self/fd/{fd}", fits_check)
    _finish_new(fd, journal.header)
    os.fsync(fd)
    journal.mark_done()


def _header(rel: str, st: os.stat_result, recipe: Recipe, item, new_mode: int, owner) -> dict:
    mtime_ns = int(round(item.src.mtime * 1e9))
    return {"path": rel, "ino": st.st_ino,
            "old_size": st.st_size, "old_mtime_ns": st.st_mtime_ns, "old_mode": stat_mod.S_IMODE(st.st_mode),
            "old_owner": [st.st_uid, st.st_gid],
            "new_size": recipe.target_size, "new_mtime_ns": mtime_ns, "new_mode": new_mode, "new_owner": owner,
            "new_digest": recipe.digest, "digest_algo": recipe.digest_algo,
            "layout": [int(recipe.layout[0]), [int(b) for b in recipe.layout[1]]] if recipe.layout else None}


def _new_attributes(build, st: os.stat_result) -> tuple:
    """(mode, owner) the updated file takes, as a renamed copy would: the
    source's permission bits (the old copy's for a remote source), never
    setuid or setgid; as root, a local source's [uid, gid] (else None)."""
    source = _local_source(build.src, build.item)
    src_st = os.stat(source) if source is not None else None
    mode = stat_mod.S_IMODE((src_st or st).st_mode) & ~(stat_mod.S_ISUID | stat_mod.S_ISGID)
    owner = [src_st.st_uid, src_st.st_gid] if src_st is not None and os.geteuid() == 0 else None
    return mode, owner


def _finish_new(fd: int, header: dict) -> None:
    if header.get("new_owner"):
        os.fchown(fd, *header["new_owner"])
    os.fchmod(fd, header["new_mode"])
    os.utime(fd, ns=(header["new_mtime_ns"], header["new_mtime_ns"]))


def _roll_back(fd: int, jpath: str) -> None:
    """Put the old version back after a failed update (the journal goes once it is back)."""
    try:
        header, records, _ = inplace.read_journal(jpath)
    except inplace.JournalCorrupt:
        unlink_state_file(jpath)
        return
    inplace.roll_back(fd, jpath, header, records)
    unlink_state_file(jpath)


# -- recovery ------------------------------------------------------------------

def recover(dst: LocalRemote) -> list:
    """Finish every update in place a crash interrupted: [(path, outcome)].
    A journal that cannot be finished is kept (and reported); the others
    are finished all the same. The caller holds the destination's lock."""
    directory = os.path.join(dst.root, STATE_DIR, JOURNALS)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".journal"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    done = []
    for name in names:
        try:
            path, outcome = recover_journal(dst, os.path.join(directory, name))
        except (OSError, FitsyncError) as exc:
            path, outcome = name, f"it could not be finished ({exc}); its journal is kept for the next run"
            log.error("%s: an update in place was interrupted; %s", path, outcome)
        else:
            log.warning("%s: an update in place was interrupted; %s", path or name, outcome)
        done.append((path, outcome))
    return done


def recover_journal(dst: LocalRemote, jpath: str) -> tuple:
    """Roll one interrupted update forward (complete and verified) or back."""
    try:
        header, records, complete = inplace.read_journal(jpath)
    except inplace.JournalCorrupt:
        unlink_state_file(jpath)  # torn before it was synced: no byte of the file was overwritten
        return None, "nothing had been written; the file is unchanged"
    rel = header["path"]
    try:
        fd = _open_for_update(dst, safe_relpath(rel))
    except FileNotFoundError:
        unlink_state_file(jpath)
        return rel, "the file is gone; its journal was dropped"
    try:
        if not _same_file(os.fstat(fd), header):
            unlink_state_file(jpath)
            return rel, "the file was replaced since; its journal was dropped"
        if complete and inplace.check_new(fd, header, _hasher(header)):
            _finish_new(fd, header)
            os.fsync(fd)
            outcome = "it was complete and verified: kept the new version"
        else:
            inplace.roll_back(fd, jpath, header, records)
            outcome = "rolled back to the old version"
        unlink_state_file(jpath)
        return rel, outcome
    finally:
        os.close(fd)


def _same_file(st: os.stat_result, header: dict) -> bool:
    """Whether ``st`` is the file the journal was written for: the same inode
    (device numbers may change across a reboot; the journal lives on the
    same tree) of a regular file whose size an interrupted update could
    have left (between the old and the new size)."""
    low, high = sorted((header["old_size"], header["new_size"]))
    return stat_mod.S_ISREG(st.st_mode) and st.st_ino == header["ino"] and low <= st.st_size <= high


def _hasher(header: dict):
    layout = tuple(header["layout"]) if header.get("layout") else None
    return Recipe([], header["new_size"], header["new_digest"], digest_algo=header["digest_algo"],
                  layout=layout).new_hasher()


def refuse_unless_possible(dst, inplace_asked: bool) -> None:
    """UsageError when ``--inplace`` cannot run on ``dst`` (one line, exit 2)."""
    if not inplace_asked:
        return
    # local_root() first: it needs no connection, so a remote is refused before one is made.
    if dst.local_root() is None or Capability.STAGED not in dst.capabilities:
        raise UsageError("--inplace updates files of a local destination only; drop it for this one")
    reason = inplace_refusal(dst.local_root())
    if reason:
        raise UsageError(reason)

