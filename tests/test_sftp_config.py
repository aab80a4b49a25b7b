"""Named remotes (fitsync.config), the `fitsync config` command, and NAME:path over SSH."""

from __future__ import annotations

import json
import os
import tomllib

import pytest

from fitsync import sshconn
from fitsync.config import config_path, find_remote, load_remotes
from fitsync.errors import BadInput
from fitsync.remotes import open_remote
from fitsync.remotes.sftp import SftpRemote
from sshd_fixture import SshServer, use_client_home


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    path = tmp_path / "remotes.toml"
    monkeypatch.setenv("FITSYNC_CONFIG", str(path))
    return path


def write_private(path, text):
    path.write_text(text)
    os.chmod(path, 0o600)


def test_config_location(monkeypatch, tmp_path):
    monkeypatch.delenv("FITSYNC_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_path() == str(tmp_path / "xdg" / "fitsync" / "remotes.toml")
    monkeypatch.setenv("FITSYNC_CONFIG", str(tmp_path / "mine.toml"))
    assert config_path() == str(tmp_path / "mine.toml")
    assert load_remotes() == {} and find_remote("anything") is None


def test_remotes_are_found_by_name(config_file):
    write_private(config_file, '[mountain]\ntype = "sftp"\nhost = "gw"\npath = "/data"\n')
    assert find_remote("mountain") == {"type": "sftp", "host": "gw", "path": "/data", "name": "mountain"}
    assert find_remote("city") is None


def test_secrets_in_a_readable_file_are_refused(config_file):
    config_file.write_text('[m]\ntype = "sftp"\nhost = "gw"\npassword = "hunter2"\n')
    os.chmod(config_file, 0o644)
    with pytest.raises(BadInput, match="chmod 600"):
        find_remote("m")
    os.chmod(config_file, 0o600)
    assert find_remote("m")["password"] == "hunter2"
    # no secrets: a readable file is fine
    config_file.write_text('[m]\ntype = "sftp"\nhost = "gw"\npassword_env = "M_PW"\n')
    os.chmod(config_file, 0o644)
    assert find_remote("m")["password_env"] == "M_PW"


@pytest.mark.parametrize("text, message", [
    ("[m\n", "not valid TOML"),
    ("[m]\nhost = 'gw'\n", "has no type"),
    ("top = 1\n", "must be a"),
    ('["bad/name"]\ntype = "sftp"\n', "may use only"),
])
def test_bad_config_is_one_line_bad_input(config_file, text, message):
    write_private(config_file, text)
    with pytest.raises(BadInput, match=message) as info:
        load_remotes()
    assert "\n" not in str(info.value)


def test_config_command_lists_without_secrets(config_file, cli):
    write_private(config_file, '[mountain]\ntype = "sftp"\nhost = "gw"\npassword = "hunter2"\n'
                               '[box]\ntype = "dropbox"\nrefresh_token = "tok-123"\n')
    result = cli("config")
    assert result.code == 0
    assert "mountain\tsftp" in result.out and "box\tdropbox" in result.out
    assert "hunter2" not in result.out + result.err and "tok-123" not in result.out + result.err
    data = cli("config", "--json").json()
    assert data["remotes"]["mountain"]["password"] == "(set)"
    assert "hunter2" not in json.dumps(data)


def test_config_template_is_valid_toml_and_written_private(cli, tmp_path):
    result = cli("config", "template", "sftp")
    assert result.code == 0
    parsed = tomllib.loads(result.out)
    assert parsed["mountain"]["type"] == "sftp"
    out = tmp_path / "remotes.toml"
    assert cli("config", "template", "sftp", f"--output={out}").code == 0
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    assert tomllib.loads(out.read_text()) == parsed
    again = cli("config", "template", "sftp", f"--output={out}")
    assert again.code == 2 and "--force" in again.err
    unknown = cli("config", "template", "nosuchkind")
    assert unknown.code == 2 and "no template" in unknown.err


def test_named_remote_connects_over_ssh(tmp_path, monkeypatch, config_file):
    server = SshServer(tmp_path / "sshd").start()
    try:
        use_client_home(server, tmp_path / "home", monkeypatch)
        data = tmp_path / "data" / "night1"
        data.mkdir(parents=True)
        (data / "run.fits").write_bytes(b"x" * 2880)
        write_private(config_file, f'[mountain]\ntype = "sftp"\nhost = "127.0.0.1"\nport = {server.port}\n'
                                   f'key_file = "{server.client_key}"\npath = "{tmp_path / "data"}"\n')
        remote = open_remote("mountain:night1")
        assert isinstance(remote, SftpRemote)
        assert [(e.path, e.size) for e in remote.list()] == [("run.fits", 2880)]
    finally:
        sshconn.close_all()
        server.stop()
