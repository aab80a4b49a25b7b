"""Dropbox credentials and the HTTPS session: where tokens, app keys and link
passwords come from (a remotes file, environment variables, the old INI file),
with files others can read refused, and the TLS session the SDK is given."""

from __future__ import annotations

import configparser
import logging
import os
import stat as stat_mod
from dataclasses import dataclass, field

import requests

from fitsync.errors import BadInput, NotFound


log = logging.getLogger("fitsync.dropbox")


@dataclass
class Credentials:
    """Where to log in. Secret fields are kept out of repr()."""

    source: str  # said in messages: which file or variable the secrets came from
    access_token: str | None = field(default=None, repr=False)
    app_key: str | None = field(default=None, repr=False)
    app_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    shared_url: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None

    def check(self) -> None:
        if not (self.access_token or self.refresh_token):
            raise BadInput(
                f"{self.source} holds no Dropbox credentials; give access_token, or app_key, "
                "app_secret and refresh_token (see `fitsync config template dropbox`)")
        if self.refresh_token and not self.app_key:
            raise BadInput(f"{self.source}: a refresh_token needs the app_key (and app_secret) it was issued to")


# -- credentials from files and options ------------------------------------------

def refuse_if_others_can_read(path: str) -> None:
    """Secrets in a file other users can read are refused, like ssh does with keys."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise NotFound(f"Dropbox config {path} does not exist") from None
    if mode & 0o077:
        raise BadInput(
            f"{path} holds Dropbox secrets but other users can access it "
            f"(mode {stat_mod.filemode(mode)}); run `chmod 600 {path}` and try again")


def read_old_ini(path: str) -> Credentials:
    """The VAST download script's INI: ``[dropbox]`` shared_url, password, access_token."""
    refuse_if_others_can_read(path)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise BadInput(f"{path} is not a valid INI file ({type(exc).__name__}); "
                       "expected a [dropbox] section") from None
    if not parser.has_section("dropbox"):
        raise BadInput(f"{path} has no [dropbox] section (expected shared_url, password, access_token)")
    section = parser["dropbox"]

    def value(key: str) -> str | None:
        text = section.get(key, "").strip()
        return text or None

    creds = Credentials(
        source=f"--dropbox-config {path}",
        access_token=value("access_token"),
        app_key=value("app_key"),
        app_secret=value("app_secret"),
        refresh_token=value("refresh_token"),
        shared_url=value("shared_url"),
        password=value("password"),
    )
    creds.check()
    return creds


_SECRET_KEYS = ("access_token", "app_secret", "refresh_token", "password")
_PLAIN_KEYS = ("app_key", "shared_url", "ca_bundle")


def credentials_from_config(name: str, conf: dict) -> Credentials:
    """A configured remote's table (fitsync.config has already refused a file
    holding secrets that other users can read). Each secret may instead be
    named by an environment variable: ``password_env = "VAST_LINK_PASSWORD"``."""
    known = {"type", "name", "path", "upload_chunk_mib", *_PLAIN_KEYS, *_SECRET_KEYS,
             *(key + "_env" for key in _SECRET_KEYS)}
    unknown = sorted(set(conf) - known)
    if unknown:
        raise BadInput(f"remote {name!r}: unknown key(s) {', '.join(unknown)}; "
                       "see `fitsync config template dropbox`")
    values = {}
    for key in (*_PLAIN_KEYS, *_SECRET_KEYS, "path"):
        value = conf.get(key)
        if value is not None and not isinstance(value, str):
            raise BadInput(f"remote {name!r}: {key} must be a string")
        values[key] = value or None
    for key in _SECRET_KEYS:
        variable = conf.get(key + "_env")
        if variable:
            if values[key]:
                raise BadInput(f"remote {name!r}: give {key} or {key}_env, not both")
            values[key] = os.environ.get(str(variable)) or None
            if values[key] is None:
                raise BadInput(f"remote {name!r}: {key}_env names {variable}, which is not set")
    creds = Credentials(
        source=f"remote {name!r} in the config",
        access_token=values["access_token"],
        app_key=values["app_key"],
        app_secret=values["app_secret"],
        refresh_token=values["refresh_token"],
        shared_url=values["shared_url"],
        password=values["password"],
        ca_bundle=values["ca_bundle"],
    )
    creds.check()
    return creds


class _NamedCASession(requests.Session):
    """A session whose CA bundle (--ca-bundle) wins over REQUESTS_CA_BUNDLE and
    CURL_CA_BUNDLE. requests lets those variables override a session's
    ``verify``; proxies from the environment still apply."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None:
            settings["verify"] = self.verify
        return settings


def tls_session(max_connections: int, ca_bundle: str | None) -> requests.Session:
    import dropbox

    sdk_session = dropbox.create_session(max_connections=max_connections, ca_certs=ca_bundle)
    if ca_bundle is None:
        return sdk_session
    session = _NamedCASession()
    session.verify = ca_bundle
    session.mount("https://", sdk_session.get_adapter("https://"))
    return session
