"""Named remotes from a TOML file, rclone-style.

The file is $FITSYNC_CONFIG, else $XDG_CONFIG_HOME/fitsync/remotes.toml
(~/.config/fitsync/remotes.toml). Each top-level table is a remote; ``type``
names the backend (sftp, dropbox, https, ...), the other keys are the
backend's own (see ``fitsync config template KIND``)::

    [mountain]
    type = "sftp"
    host = "gw.observatory.example"
    user = "obs"
    path = "/data/74in"

``NAME:path`` on the command line then means ``path`` under that remote.
A file that holds secrets (passwords, tokens) is refused when other users
may read it.
"""

from __future__ import annotations

import os
import stat
try:
    import tomllib  # novm (tomli below on 3.10)
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from fitsync.errors import BadInput

CONFIG_ENV = "FITSYNC_CONFIG"
# Key names whose values are secrets: never printed, and the file must be private.
_SECRET_WORDS = ("password", "passphrase", "secret", "token")
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def config_path() -> str:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return os.path.expanduser(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "fitsync", "remotes.toml")


def is_secret(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in _SECRET_WORDS) and not key.endswith(("_env", "_file"))


def _has_secrets(table: dict) -> bool:
    for key, value in table.items():
        if isinstance(value, dict) and _has_secrets(value):
            return True
        if is_secret(key) and value not in ("", None):
            return True
    return False


def load_remotes(path: str | None = None) -> dict[str, dict]:
    """Every remote in the config file ({} when there is no file)."""
    path = path or config_path()
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"remotes config {path} is not valid TOML: {exc}; fix the file") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep, bad text encoding
        raise BadInput(f"remotes config {path} is not valid TOML ({exc.__class__.__name__}); fix the file") from None
    except OSError as exc:
        raise BadInput(f"cannot read remotes config {path}: {exc.strerror or exc}") from None
    remotes = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise BadInput(f"remotes config {path}: {name!r} must be a [table] naming a remote")
        if not name or not set(name) <= _NAME_OK:
            raise BadInput(f"remotes config {path}: remote name {name!r} may use only letters, digits, _ - .")
        if not isinstance(table.get("type"), str):
            raise BadInput(f"remotes config {path}: remote {name!r} has no type (sftp, dropbox, https, ...)")
        remotes[name] = dict(table, name=name)
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and any(_has_secrets(t) for t in remotes.values()):
        raise BadInput(f"remotes config {path} holds secrets but other users can read it; "
                       f"run: chmod 600 {path}")
    return remotes


def find_remote(name: str) -> dict | None:
    """The config table of remote ``name``, or None when it is not configured."""
    return load_remotes().get(name)


def public_view(conf: dict) -> dict:
    """``conf`` with secret values replaced, for listing."""
    shown = {}
    for key, value in conf.items():
        if isinstance(value, dict):
            shown[key] = public_view(value)
        elif is_secret(key) and value not in ("", None):
            shown[key] = "(set)"
        else:
            shown[key] = value
    return shown
