"""Option parsing shared by the commands."""

from __future__ import annotations

import sys

from fitsync.errors import UsageError


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


def load_selection(opts: dict):
    """The file selection from --include/--exclude/--files-from/--since/... or None."""
    keys = ("--include", "--exclude", "--files-from", "--since", "--max-age", "--date", "--template",
            "--where", "--profile")
    if not any(opts.get(k) for k in keys):
        return None
    from fitsync.selection import build_selection

    return build_selection(opts)


def print_json(data) -> None:
    import json

    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()


def load_manifest(path: str | None, opts: dict):
    """Read a manifest file, verifying its signature first when --verify-key is given."""
    if not path:
        return None
    if opts.get("--verify-key"):
        from fitsync.signing import verify_manifest_file

        verify_manifest_file(path, opts["--verify-key"])
    from fitsync.manifest import read_manifest

    return read_manifest(path)


def open_source(spec: str, opts: dict):
    """Open a location that is read from. A remote that can neither run code nor
    is local, but publishes a release manifest, is listed and delta-served from
    it; with --verify-key the manifest's signature must verify."""
    from fitsync.remotes import Capability, open_remote

    remote = open_remote(spec, opts)
    if Capability.LOCAL in remote.capabilities and not opts.get("--verify-key"):
        return remote  # a local tree is listed as it is (release_source agrees); spare its import
    from fitsync.release import release_source

    return release_source(remote, opts)
