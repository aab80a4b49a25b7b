"""fitsync: mirror and check FITS astronomy archives.

Usage:
  fitsync mirror SRC DST [options]
  fitsync manifest ROOT [options]
  fitsync audit TARGET [options]
  fitsync compare A B [options]
  fitsync datasets STORE [options]
  fitsync missing SRC [options]
  fitsync recover DST [options]
  fitsync config [ARGS...]
  fitsync keygen KEYFILE
  fitsync completion SHELL
  fitsync COMMAND --help
  fitsync --help | --version

Commands:
  mirror     Make DST an exact, verified copy of SRC, moving only what changed.
  manifest   Write a manifest (sizes, BLAKE3 digests, optional block signatures).
  audit      Check a copy against a manifest, or FITS files by their own structure.
  compare    List files only on A, only on B, differing, and identical.
  datasets   List the productions of an IACT data store (master.json).
  missing    Report which keys (tiles, observations) lack expected files.
  recover    Finish updates in place (mirror --inplace) that a crash interrupted.
  config     List configured remotes; write a commented template.
  keygen     Make an Ed25519 key pair for signing release manifests.
  completion Print a bash or zsh completion script.

SRC's contents are mirrored into DST, with or without a trailing '/' (rclone's
rule, not rsync's). rsync's short options work: -n -i -c -v -q -P -j N -V.

Locations: a local path, sftp://[user@]host[:port]/path, [user@]host:path,
dropbox:/path, https://host/path/, or NAME:path for a configured remote.

Exit codes: 0 ok; 1 differences, corruption or missing files found; 2 usage
or bad input; 3 some files failed after retries; 4 connection or
authentication failure; 5 destination locked by another fitsync.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import time

from fitsync import __version__
from fitsync.errors import EXIT_FAILED, EXIT_USAGE, FitsyncError

COMMANDS = ("mirror", "manifest", "audit", "compare", "datasets", "missing", "recover", "config", "keygen", "completion")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # The reader went away (``fitsync --help | head -1``): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush is silent too.
        import os

        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else EXIT_USAGE
    if argv[0] in ("--version", "-V"):
        print(f"fitsync {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        print(f"fitsync: unknown command {command!r}; {hint}commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        module = importlib.import_module(f"fitsync.cli.{command}")
    except ModuleNotFoundError as exc:
        print(f"fitsync: the {command} command is not available ({exc.name} is missing)", file=sys.stderr)
        return EXIT_USAGE
    return dispatch(module, argv)


def dispatch(module, argv: list[str]) -> int:
    opts = parse(module, argv)
    if isinstance(opts, int):
        return opts
    logger = logging.getLogger("fitsync")
    # main() may be called from a caller's Python: its "fitsync" logger comes back as it was.
    saved = (list(logger.handlers), logger.level, logger.propagate)
    started = time.monotonic()
    code = EXIT_FAILED
    try:
        code = run_logged(module, opts, logger)
        return code
    finally:
        logger.info("end: exit %d after %.2f s", code, time.monotonic() - started)
        for handler in logger.handlers:
            if handler not in saved[0]:
                handler.close()
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def parse(module, argv: list[str]) -> dict | int:
    """docopt's dictionary for ``argv`` (short options and aliases spelled out
    first), or the exit code when there is nothing to run."""
    from docopt import DocoptExit, docopt

    from fitsync.cli.argv import normalize

    try:
        argv, itemize = normalize(argv, module.__doc__)
    except FitsyncError as exc:
        print(f"fitsync: {exc}", file=sys.stderr)
        return exc.exit_code
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
    if "--itemize" in opts:
        opts["--itemize"] = itemize  # -ii: unchanged files too
    return opts


def run_logged(module, opts: dict, logger: logging.Logger) -> int:
    """Run the command; every error becomes one line and its exit code, and
    the log file records the command line, and a fatal error."""
    from fitsync.progress import log_to_file_only, setup_logging

    try:
        setup_logging(opts.get("--log-file"), bool(opts.get("--quiet")), bool(opts.get("--verbose")))
        logger.info("start: fitsync %s %s", __version__, " ".join(masked(opts["ARGV"])))
        return module.run(opts)
    except FitsyncError as exc:
        message, code = str(exc), exc.exit_code
    except BrokenPipeError:
        raise  # main() ends the run quietly
    except OSError as exc:
        # Last resort for a system error no layer translated: still one line.
        where = f" ({exc.filename})" if exc.filename else ""
        message, code = f"{exc.strerror or exc}{where}", EXIT_FAILED
    except KeyboardInterrupt:
        message, code = "interrupted; run the same command again to resume", 130
    print(f"fitsync: {message}", file=sys.stderr)
    log_to_file_only(logging.ERROR, f"fatal: {message}")
    return code


_USERINFO = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")


def masked(argv: list[str]) -> list[str]:
    """The command line as the log file records it: passwords in URLs hidden."""
    return [_USERINFO.sub(r"\1***@", word) for word in argv]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
