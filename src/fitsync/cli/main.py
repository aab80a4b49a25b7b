"""fitsync: mirror and check FITS astronomy archives.

Usage:
  fitsync mirror SRC DST [options]
  fitsync manifest ROOT [options]
  fitsync audit TARGET [options]
  fitsync compare A B [options]
  fitsync datasets STORE [options]
  fitsync missing SRC [options]
  fitsync config [ARGS...]
  fitsync keygen KEYFILE
  fitsync COMMAND --help
  fitsync --help | --version

Commands:
  mirror     Make DST an exact, verified copy of SRC, moving only what changed.
  manifest   Write a manifest (sizes, BLAKE3 digests, optional block signatures).
  audit      Check a copy against a manifest, or FITS files by their own structure.
  compare    List files only on A, only on B, differing, and identical.
  datasets   List the productions of an IACT data store (master.json).
  missing    Report which keys (tiles, observations) lack expected files.
  config     List configured remotes; write a commented template.
  keygen     Make an Ed25519 key pair for signing release manifests.

Locations: a local path, sftp://[user@]host[:port]/path, [user@]host:path,
dropbox:/path, https://host/path/, or NAME:path for a configured remote.

Exit codes: 0 ok; 1 differences, corruption or missing files found; 2 usage
or bad input; 3 some files failed after retries; 4 connection or
authentication failure; 5 destination locked by another fitsync.
"""

from __future__ import annotations

import importlib
import sys

from fitsync import __version__
from fitsync.errors import EXIT_FAILED, EXIT_USAGE, FitsyncError

COMMANDS = ("mirror", "manifest", "audit", "compare", "datasets", "missing", "config", "keygen")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else EXIT_USAGE
    if argv[0] == "--version":
        print(f"fitsync {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"fitsync: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        module = importlib.import_module(f"fitsync.cli.{command}")
    except ModuleNotFoundError as exc:
        print(f"fitsync: the {command} command is not available ({exc.name} is missing)", file=sys.stderr)
        return EXIT_USAGE
    return dispatch(module, argv)


def dispatch(module, argv: list[str]) -> int:
    from docopt import DocoptExit, docopt

    try:
        opts = docopt(module.__doc__, argv=argv, version=f"fitsync {__version__}")
    except DocoptExit as exc:
        print(str(exc).strip(), file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help or --version, already printed by docopt
        return exc.code if isinstance(exc.code, int) else 0
    # docopt keeps --include and --exclude in separate lists; the filter rules
    # need their command-line order (first match wins), so keep the words too.
    opts["ARGV"] = argv
    import logging

    from fitsync.progress import setup_logging

    # main() may be called from a caller's Python: its "fitsync" logger comes back as it was.
    logger = logging.getLogger("fitsync")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        setup_logging(opts.get("--log-file"), bool(opts.get("--quiet")), bool(opts.get("--verbose")))
        return module.run(opts)
    except FitsyncError as exc:
        print(f"fitsync: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # Last resort for a system error no layer translated: still one line.
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"fitsync: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("fitsync: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        for handler in logger.handlers:
            if handler not in saved[0]:
                handler.close()
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
