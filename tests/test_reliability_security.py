"""Secrets and permissions (issue 9): tokens and passwords never appear in
output, logs, state files, error messages or process arguments; a config that
holds secrets and that other users can read is refused.

The Dropbox runs go through the real CLI in a child process against the
local API v2 server of tests/dropbox_fixture.py (unmodified dropbox SDK, TLS),
with faults injected so that retries, warnings and errors are all logged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))

from dropbox_fixture import dropbox_server  # noqa: F401,E402  (pytest fixture)
from harness import fitsync_cmd, fitsync_env  # noqa: E402

TOKEN = "tok-SECRET-9f3a7c"
PASSWORD = "pw-SECRET-77e1d0"
LINK = "https://www.dropbox.com/sh/q9q9q9/AAlinkSECRETpart?dl=0"
SECRETS = (TOKEN, PASSWORD, "AAlinkSECRETpart")


def _ini(tmp_path: Path, password: str = PASSWORD, token: str = TOKEN, mode: int = 0o600) -> Path:
    ini = tmp_path / f"vast-{len(list(tmp_path.glob('vast-*.ini')))}.ini"
    ini.write_text(f"[dropbox]\nshared_url = {LINK}\npassword = {password}\naccess_token = {token}\n")
    ini.chmod(mode)
    return ini


class CmdlineWatcher(threading.Thread):
    """Samples /proc/<pid>/cmdline and environ-free argv of a child and its children while it runs."""

    def __init__(self, proc: subprocess.Popen):
        super().__init__(daemon=True)
        self.proc = proc
        self.seen: set[str] = set()

    def run(self):
        while self.proc.poll() is None:
            for pid in self._family(self.proc.pid):
                try:
                    self.seen.add(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
                except OSError:
                    pass
            time.sleep(0.01)

    @staticmethod
    def _family(pid: int) -> list[int]:
        family = [pid]
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return family
        for child in children:
            family += CmdlineWatcher._family(int(child))
        return family


def _run_watched(args, env) -> tuple[subprocess.CompletedProcess, set[str]]:
    proc = subprocess.Popen(fitsync_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    watcher = CmdlineWatcher(proc)
    watcher.start()
    out, err = proc.communicate(timeout=120)
    watcher.join()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), watcher.seen


def _everything_written(*roots: Path) -> str:
    """Text of every file under ``roots`` (logs, state files, copies' names)."""
    chunks = []
    for root in roots:
        for path in root.rglob("*"):
            chunks.append(str(path))
            if path.is_file() and path.stat().st_size < 10 << 20:
                chunks.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(chunks)


def test_dropbox_secrets_never_leak_on_success_retries_and_failures(dropbox_server, tmp_path):  # noqa: F811
    srv = dropbox_server
    srv.tokens.add(TOKEN)
    srv.expired_tokens.add("tok-SECRET-expired")
    for i in range(3):
        srv.put_file(f"/S/EPOCH01/f{i}.fits", os.urandom(20_000 + i))
    srv.add_shared_link(LINK, "/S", PASSWORD)
    srv.inject("files/list_folder", "429", retry_after=1)
    srv.inject("sharing/get_shared_link_file", "cut", cut_after=10)
    srv.inject("sharing/get_shared_link_file", "503")
    env = dict(srv.env(), **fitsync_env())
    logs = tmp_path / "logs"
    logs.mkdir()
    runs = [
        (0, _ini(tmp_path), "ok"),
        (4, _ini(tmp_path, password="pw-SECRET-wrong"), "wrong-password"),
        (4, _ini(tmp_path, token="tok-SECRET-expired"), "expired-token"),
    ]
    seen_text = []
    for expected, ini, name in runs:
        dst = tmp_path / f"dst-{name}"
        proc, argv = _run_watched(["mirror", "dropbox:/EPOCH01", dst, "--dropbox-config", ini, "--ca-bundle",
                                   srv.ca_file, "--json", "--verbose", "--itemize", f"--log-file={logs / name}.log"],
                                  env)
        assert proc.returncode == expected, proc.stderr
        assert "Traceback" not in proc.stderr
        seen_text += [proc.stdout, proc.stderr, *argv, _everything_written(dst, logs)]
    everything = "\n".join(seen_text)
    assert "rate limit" in everything or "429" in everything, "the retries were logged (the test saw them)"
    for secret in (*SECRETS, "pw-SECRET-wrong", "tok-SECRET-expired"):
        assert secret not in everything, f"{secret} leaked"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_configs_holding_secrets_that_others_can_read_are_refused(tmp_path, mode):
    config = tmp_path / "remotes.toml"
    config.write_text(f'[vault]\ntype = "dropbox"\naccess_token = "{TOKEN}"\n')
    config.chmod(mode)
    env = dict(fitsync_env(), FITSYNC_CONFIG=str(config))
    for args in (["mirror", "vault:/x", tmp_path / "dst"], ["config"]):
        proc = subprocess.run(fitsync_cmd(*args), env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "chmod 600" in proc.stderr and TOKEN not in proc.stdout + proc.stderr
    ini = _ini(tmp_path, mode=mode)
    proc = subprocess.run(fitsync_cmd("mirror", "dropbox:/x", tmp_path / "d2", "--dropbox-config", ini),
                          env=fitsync_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "chmod 600" in proc.stderr and PASSWORD not in proc.stderr
    assert not (tmp_path / "dst").exists() and not (tmp_path / "d2").exists()


def test_private_config_is_listed_without_its_secrets(tmp_path):
    config = tmp_path / "remotes.toml"
    config.write_text(f'[vault]\ntype = "dropbox"\naccess_token = "{TOKEN}"\n'
                      f'[mountain]\ntype = "sftp"\nhost = "h"\npassword = "{PASSWORD}"\n')
    config.chmod(0o600)
    env = dict(fitsync_env(), FITSYNC_CONFIG=str(config))
    for args in (["config"], ["config", "--json"]):
        proc = subprocess.run(fitsync_cmd(*args), env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "vault" in proc.stdout and "mountain" in proc.stdout
        assert TOKEN not in proc.stdout + proc.stderr and PASSWORD not in proc.stdout + proc.stderr
