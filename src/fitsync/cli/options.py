"""The only reader of docopt's dictionary: turns a command line into the typed
options of fitsync.options and the keyword arguments of the API functions."""

from __future__ import annotations

import sys
from typing import Optional

from fitsync.errors import UsageError
from fitsync.options import RemoteOptions, Selection


def int_option(opts: dict, name: str, default: int, minimum: int = 0) -> int:
    value = opts.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{name} takes a whole number, not {value!r}") from None
    if number < minimum:
        raise UsageError(f"{name} must be at least {minimum}")
    return number


def seconds_option(opts: dict, name: str) -> Optional[float]:
    value = opts.get(name)
    if value in (None, False, ""):
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):  # also refuses NaN
        raise UsageError(f"{name} must be a number of seconds (0 or more), not {value!r}")
    return seconds


def remote_options(opts: dict) -> RemoteOptions:
    """How this command opens its locations."""
    return RemoteOptions(
        accept_new_host_key=bool(opts.get("--accept-new-host-key")),
        ca_bundle=opts.get("--ca-bundle") or None,
        dropbox_config=opts.get("--dropbox-config") or None,
        verify_key=opts.get("--verify-key") or None,
        timeout=seconds_option(opts, "--timeout"),
        retries=int_option(opts, "--retries", 3) if opts.get("--retries") is not None else None,
        jobs=int_option(opts, "--jobs", 2, minimum=1) if opts.get("--jobs") is not None else None,
        allow_password_in_url=bool(opts.get("--allow-password-in-url")),
    )


def selection(opts: dict, argv: Optional[list] = None) -> Optional[Selection]:
    """The files this command works on, or None for all. ``argv`` gives the
    order of the filter options, which docopt's lists lose."""
    def listed(name: str) -> tuple:
        value = opts.get(name) or ()
        return (value,) if isinstance(value, str) else tuple(value)

    given = {name: list(listed(name)) for name in FILTER_OPTIONS}
    order = command_line_order(given, argv if argv is not None else opts.get("ARGV"))
    chosen = Selection(
        filters=tuple(_filter_rules(order)),
        files_from=opts.get("--files-from"), since=opts.get("--since"), max_age=opts.get("--max-age"),
        min_age=opts.get("--min-age"), min_size=opts.get("--min-size"), max_size=opts.get("--max-size"),
        date=opts.get("--date"), template=opts.get("--template"), profile=opts.get("--profile"),
        where=listed("--where"), production=opts.get("--production"), runlist=opts.get("--runlist"),
        keep_local=bool(opts.get("--keep-local")), allow_root=listed("--allow-root"),
    )
    return chosen if chosen.selects_files() or chosen.production or chosen.allow_root else None


# The options that make filter rules, and whether each includes.
FILTER_OPTIONS = {"--include": True, "--exclude": False, "--include-from": True, "--exclude-from": False}


def _filter_rules(order: list) -> list:
    """'+ PATTERN' / '- PATTERN' rules; a pattern file's lines stand where the file was named."""
    rules = []
    for name, value in order:
        sign = "+ " if FILTER_OPTIONS[name] else "- "
        if name.endswith("-from"):
            from fitsync.selection import read_patterns

            patterns = read_patterns(value)
        else:
            patterns = [value]
        rules.extend(sign + pattern for pattern in patterns)
    return rules


def command_line_order(given: dict, argv) -> list:
    """(option, value) of the filter options in the order typed. docopt keeps
    one list per option, so the order comes from ``argv`` (or sys.argv when it
    holds the same options); failing both, the options' order above."""
    wanted = sorted((name, value) for name, values in given.items() for value in values)
    for candidate in (argv, sys.argv[1:]):
        if candidate is not None:
            order = rule_order(list(candidate))
            if sorted(order) == wanted:
                return order
    return [(name, value) for name in FILTER_OPTIONS for value in given.get(name, ())]


def rule_order(argv: list) -> list:
    """The filter options of ``argv`` as (option, value), in the order given."""
    order = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        for name in FILTER_OPTIONS:
            if arg == name and i + 1 < len(argv):
                order.append((name, argv[i + 1]))
                i += 1
            elif arg.startswith(name + "="):
                order.append((name, arg[len(name) + 1:]))
        i += 1
    return order


def progress_bar(opts: dict):
    """The hashing commands' progress bar: on a terminal (or with -P), never with -q."""
    if opts.get("--quiet") or not (opts.get("--progress") or sys.stderr.isatty()):
        return None
    from fitsync.progress import tqdm_bar

    return tqdm_bar(file=sys.stderr, dynamic_ncols=True)


def print_json(data) -> None:
    import json

    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()
