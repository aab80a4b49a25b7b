"""List configured remotes; write a commented template for a new one.

Usage:
  fitsync config [--json]
  fitsync config template KIND [--output=FILE] [--force]
  fitsync config --help

The remotes file is $FITSYNC_CONFIG, else $XDG_CONFIG_HOME/fitsync/remotes.toml
(~/.config/fitsync/remotes.toml). Each [NAME] table is a remote used as
NAME:path. Listing never shows secrets. A file holding secrets must not be
readable by other users (chmod 600).

KIND is a backend: sftp, dropbox.

Options:
  --json           Print the remotes as JSON.
  --output=FILE    Write the template to FILE (mode 0600) instead of stdout.
  --force          Overwrite FILE if it exists.
"""

from __future__ import annotations

import os
import sys
from importlib import resources

from fitsync.cli.options import print_json
from fitsync.config import config_path, load_remotes, public_view
from fitsync.errors import EXIT_OK, BadInput, UsageError


def run(opts: dict) -> int:
    if opts["template"]:
        return write_template(opts["KIND"], opts["--output"], bool(opts["--force"]))
    return list_remotes(bool(opts["--json"]))


def list_remotes(as_json: bool) -> int:
    path = config_path()
    remotes = {name: public_view(conf) for name, conf in load_remotes(path).items()}
    if as_json:
        print_json({"config": path, "remotes": remotes})
        return EXIT_OK
    if not remotes:
        print(f"no remotes configured in {path}; start from: fitsync config template sftp", file=sys.stderr)
        return EXIT_OK
    print(f"# {path}")
    for name in sorted(remotes):
        conf = remotes[name]
        details = " ".join(f"{k}={v}" for k, v in sorted(conf.items()) if k not in ("name", "type"))
        print(f"{name}\t{conf['type']}\t{details}")
    return EXIT_OK


def template_text(kind: str) -> str:
    if not kind.replace("_", "").isalnum():
        raise UsageError(f"no template for {kind!r}")
    try:
        return resources.files("fitsync").joinpath("templates", f"{kind}.toml").read_text("utf-8")
    except (FileNotFoundError, NotADirectoryError):
        known = sorted(p.name[:-5] for p in resources.files("fitsync").joinpath("templates").iterdir()
                       if p.name.endswith(".toml"))
        raise UsageError(f"no template for {kind!r}; known kinds: {', '.join(known)}") from None


def write_template(kind: str, output: str | None, force: bool) -> int:
    text = template_text(kind)
    if not output:
        sys.stdout.write(text)
        return EXIT_OK
    output = os.path.expanduser(output)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), mode=0o700, exist_ok=True)
        fd = os.open(output, flags, 0o600)  # a remotes file may come to hold secrets
    except FileExistsError:
        raise BadInput(f"{output} exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise BadInput(f"cannot write {output}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote a {kind} remote template to {output}", file=sys.stderr)
    return EXIT_OK
