"""Write a manifest of a tree: files, sizes, mtimes, BLAKE3 digests.

Usage:
  fitsync manifest ROOT [--output=FILE] [--blocks] [--format=FMT] [--jobs=N] [--sign=KEYFILE]
                        [--no-fits] [--quiet] [--include=PAT]... [--exclude=PAT]...
                        [--files-from=FILE] [--since=WHEN] [--max-age=DURATION] [--date=DAY]
                        [--template=T] [--profile=NAME] [--where=EXPR]... [--accept-new-host-key] [--timeout=SECONDS]
                        [--ca-bundle=FILE] [--dropbox-config=FILE]
  fitsync manifest --help

Options:
  --output=FILE     Write here (atomically) instead of standard output; for
                    the bagit format, the bag directory (default: ROOT's parent).
  --blocks          Add each file's block signature (release manifests for
                    delta downloads).
  --format=FMT      jsonl (documented in docs/manifest.md), b3sum, sha256sum or
                    bagit [default: jsonl].
  --jobs=N          Files hashed at once [default: 2].
  --sign=KEYFILE    Sign the manifest with an Ed25519 key (see fitsync keygen).
  --no-fits         Do not record FITS HDU counts and checksum status.
  --quiet           Print nothing but errors.
  --timeout=SECONDS  An SSH connection silent for SECONDS is lost (default 60; 0: never).
"""

from __future__ import annotations

import os
import sys

from fitsync.cli.common import int_option, load_selection
from fitsync.errors import EXIT_FAILED, EXIT_OK, NotFound, UsageError
from fitsync.manifest import DEFAULT_NAME, build_entries, write_atomically, write_b3sum, write_hashlist, write_jsonl
from fitsync.paths import shown
from fitsync.remotes import open_remote
from fitsync.scan import digest_entries

FORMATS = ("jsonl", "b3sum", "sha256sum", "bagit")


def run(opts: dict) -> int:
    fmt = opts["--format"]
    if fmt not in FORMATS:
        raise UsageError(f"unknown manifest format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if opts["--sign"] and (fmt != "jsonl" or not opts["--output"]):
        raise UsageError("--sign needs --format=jsonl and --output=FILE")
    jobs = int_option(opts, "--jobs", 2, minimum=1)
    selection = load_selection(opts)
    with open_remote(opts["ROOT"], opts) as root:
        if not root.exists():
            raise NotFound(f"{opts['ROOT']} does not exist; check the path")
        output = opts["--output"]
        skip = _own_files(root, output)
        listed = [e for e in root.list() if e.path not in skip and (selection is None or selection.matches(e))]
        if fmt == "bagit":
            return _write_bagit(root, listed, output, jobs)
        if fmt == "sha256sum":
            digests, errors = digest_entries(root, listed, algo="sha256", jobs=jobs)
            entries = [e for e in listed if e.path in digests]
            _emit(output, lambda out: write_hashlist(out, entries, digests))
            return _finish(errors, root)
        entries, errors = build_entries(root, listed, blocks=opts["--blocks"], fits_fields=not opts["--no-fits"],
                                        jobs=jobs)
    if fmt == "b3sum":
        _emit(output, lambda out: write_b3sum(out, entries))
    else:
        _emit(output, lambda out: write_jsonl(out, entries, blocks=bool(opts["--blocks"])))
        if opts["--sign"]:
            from fitsync.signing import sign_manifest_file

            sign_manifest_file(output, opts["--sign"])
    return _finish(errors, root)


def _own_files(root, output: str | None) -> set[str]:
    """A manifest never lists itself (nor its signature)."""
    skip = {DEFAULT_NAME, DEFAULT_NAME + ".sig"}
    local_root = getattr(root, "root", None)
    if output and local_root:
        rel = os.path.relpath(os.path.abspath(output), local_root)
        if not rel.startswith(".."):
            skip.update({rel.replace(os.sep, "/"), rel.replace(os.sep, "/") + ".sig"})
    return skip


def _emit(output: str | None, write) -> None:
    if output:
        write_atomically(output, write)
    else:
        write(sys.stdout)


def _finish(errors: dict[str, str], root=None) -> int:
    errors = dict(errors)
    errors.update(dict(getattr(root, "rejected_names", ())))  # names the tree holds but a manifest cannot
    for path, error in sorted(errors.items()):
        print(f"fitsync: {shown(path)}: {error}", file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK


def _write_bagit(root, listed, output: str | None, jobs: int) -> int:
    """BagIt 1.0 tag files for a bag whose payload directory is ROOT (named data/)."""
    from fitsync.bagit import write_bag_tags

    local_root = getattr(root, "root", None)
    if local_root is None:
        raise UsageError("--format=bagit needs a local ROOT (the bag's data/ directory)")
    digests, errors = digest_entries(root, listed, algo="sha512", jobs=jobs)
    bag_dir = output or os.path.dirname(local_root)
    write_bag_tags(bag_dir, local_root, [e for e in listed if e.path in digests], digests)
    return _finish(errors, root)
