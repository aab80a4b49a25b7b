"""Manifest entries hashed from a tree: one read per file for its BLAKE3,
its FITS report, its block signature and its ``--also`` digests, with the
file's size and mtime from the same moment as its digest."""

from __future__ import annotations

from operator import attrgetter

from fitsync.errors import SourceChanged
from fitsync.formats.manifest import ManifestEntry

# A file that changes while it is hashed is hashed again, this many times in
# all, with its new size and mtime; then it is reported.
CHANGED_TRIES = 3


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
        return _steady(remote, local, entry, hash_one)

    def hash_one(entry):
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


def _steady(remote, local: bool, entry, make) -> ManifestEntry:
    """``make(entry)`` for a file that may change while it is read: on
    SourceChanged (a file that shrank under its map, say) it is made again
    from the file's new size and mtime. For a local file a size or mtime that
    differs after the read from the listing's counts as a change too, so that
    no line pairs one version's size with another version's digest."""
    for attempt in range(CHANGED_TRIES):
        try:
            made = make(entry)
            if not local or _same_version(remote.stat(entry.path), entry):
                return made
            changed = SourceChanged(f"{entry.path} changed while it was read; try again")
        except SourceChanged as exc:
            changed = exc
        if attempt == CHANGED_TRIES - 1:
            raise changed
        entry = remote.stat(entry.path)
    raise AssertionError("unreachable")


def _same_version(now, listed) -> bool:
    # Listings and stat() may round st_mtime_ns to a float differently.
    return now.size == listed.size and abs(now.mtime - listed.mtime) < 1e-6


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
    """build_entries for a plain local tree: small files hashed in batches
    (scan.hash_local_files); FITS files (known by name or by their first
    bytes) and large files one by one, each in one read for its digest and
    FITS report, and again if it changed meanwhile (_steady)."""
    from fitsync.fitsnames import FITS_MAGIC, looks_like_fits
    from fitsync.scan import SMALL_FILE, for_each_file, hash_local_files

    entries = list(entries)
    single = [e for e in entries if e.size >= SMALL_FILE or (fits_fields and looks_like_fits(e.path, b""))]
    chosen = {e.path for e in single}
    small = [e for e in entries if e.path not in chosen] if chosen else entries
    digests, errors, fits_content = hash_local_files(remote, small, starts_with=FITS_MAGIC if fits_fields else b"",
                                                     jobs=jobs)
    again = {e.path for e in fits_content}  # FITS content under another name: checked below
    results = [ManifestEntry(e.path, e.size, e.mtime, digests[e.path])
               for e in small if e.path not in again and e.path in digests]
    if on_done:
        for entry in small:
            if entry.path not in again:
                on_done(entry)

    def one(entry):
        from fitsync.fitsaudit import audit_and_digest, manifest_fields
        from fitsync.hashes import file_digest

        full = remote.local_path(entry.path)
        if entry.path in again:  # known to be FITS: no need to look at its first bytes again
            report, digest = audit_and_digest(full, display_path=entry.path)
        elif fits_fields:
            report, digest, _ = _digest_with_fits(full, entry.path)
        else:
            report, digest = None, file_digest(full)
        extra = {"fits": manifest_fields(report)} if report is not None else {}
        return ManifestEntry(entry.path, entry.size, entry.mtime, digest, extra)

    _collect(for_each_file(single + fits_content, lambda e: _steady(remote, True, e, one), jobs=jobs),
             results, errors, on_done)
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
