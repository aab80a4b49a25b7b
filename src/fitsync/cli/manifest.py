"""Write a manifest of a tree: files, sizes, mtimes, BLAKE3 digests.

Usage:
  fitsync manifest ROOT [--output=FILE] [--blocks] [--format=FMT] [--jobs=N] [--sign=KEYFILE]
                        [--no-fits] [--quiet] [--include=PAT]... [--exclude=PAT]...
                        [--files-from=FILE] [--since=WHEN] [--max-age=DURATION] [--date=DAY]
                        [--template=T] [--profile=NAME] [--where=EXPR]...
                        [--include-from=FILE]... [--exclude-from=FILE]... [--min-age=DURATION] [--max-size=SIZE]
                        [--min-size=SIZE] [--log-file=FILE] [--progress] [--accept-new-host-key] [--timeout=SECONDS]
                        [--ca-bundle=FILE] [--allow-password-in-url] [--dropbox-config=FILE]
                        [--dask=ADDRESS] [--shards=DIR] [--resume] [--batch-files=N] [--also=LIST]
  fitsync manifest --help

Options:
  --allow-password-in-url  Accept https://user:password@host/ (every local user can read it).
  --include-from=FILE  Include patterns from FILE, one per line (# comments).
  --exclude-from=FILE  Exclude patterns from FILE, one per line (# comments).
  --min-age=DURATION   Only files older than DURATION.
  --max-size=SIZE      Only files of at most SIZE (500M, 2GiB).
  --min-size=SIZE      Only files of at least SIZE.
  --log-file=FILE      Append a timestamped log to FILE.
  -P, --progress       Show a progress bar even when stderr is not a terminal.
  --output=FILE     Write here (atomically) instead of standard output; for
                    the bagit format, the bag directory (default: ROOT's parent).
  --blocks          Add each file's block signature (release manifests for
                    delta downloads).
  --format=FMT      jsonl (documented in docs/manifest.md), b3sum, sha256sum or
                    bagit [default: jsonl].
  -j N, --jobs=N          Files hashed at once [default: 2].
  --sign=KEYFILE    Sign the manifest with an Ed25519 key (see fitsync keygen).
  --no-fits         Do not record FITS HDU counts and checksum status.
  --also=LIST       More digests on each jsonl line, from the same read:
                    adler32 and md5 (what Rucio and FTS check replicas with),
                    sha256; e.g. --also=adler32,md5.
  --dask=ADDRESS    Hash on a Dask cluster: local:N (N worker processes here),
                    tcp://HOST:PORT, or a scheduler file (docs/cluster.md).
  --shards=DIR      Where a cluster run writes its batches (default: OUTPUT.shards).
  --resume          Skip the batches a killed cluster run already finished.
  --batch-files=N   Files per batch on a cluster (default 5000, or 1/64 of a smaller
                    tree; a batch also stops at 4 GiB).
  -q, --quiet           Print nothing but errors.
  --timeout=SECONDS  An SSH connection silent for SECONDS is lost (default 60; 0: never).
"""

from __future__ import annotations

import sys

from fitsync.cli.options import int_option, progress_bar, remote_options, selection
from fitsync.errors import EXIT_FAILED, EXIT_OK
from fitsync.paths import shown


def run(opts: dict) -> int:
    from fitsync import api

    output = opts["--output"] or None
    result = api.manifest(opts["ROOT"], output=output if output or opts["--format"] == "bagit" else sys.stdout,
                          blocks=bool(opts["--blocks"]), format=opts["--format"], sign=opts["--sign"] or None,
                          select=selection(opts), jobs=int_option(opts, "--jobs", 2, minimum=1),
                          fits=not opts["--no-fits"], remote_options=remote_options(opts), progress=progress_bar(opts),
                          cluster=opts["--dask"] or None, shards=opts["--shards"] or None, resume=bool(opts["--resume"]),
                          batch_files=int_option(opts, "--batch-files", None, minimum=1),
                          also=opts["--also"] or ())
    if result.output:
        from fitsync.progress import log
        from fitsync.units import human_bytes

        what = f"{result.format} manifest" if result.format != "bagit" else "BagIt tag files"
        line = (f"wrote a {what} of {result.files} files ({human_bytes(result.bytes)}) to {result.output}"
                + (", signed" if result.signed else "")
                + (f", in {result.batches + result.batches_skipped} batches on the cluster"
                   f" ({result.batches_skipped} done by an earlier run)" if result.batches + result.batches_skipped else ""))
        log.info("summary: %s", line)
        if not opts["--quiet"]:
            print(line, file=sys.stderr)
    for error in sorted(result.errors, key=lambda e: e["path"]):
        print(f"fitsync: {shown(error['path'])}: {error['reason']}", file=sys.stderr)
    return EXIT_FAILED if result.errors else EXIT_OK
