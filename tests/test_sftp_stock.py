"""SSH deltas to a host with a stock python3 (no fitsync, blake3, xxhash or
numpy): the agent's STDLIB signature, patches verified by its digest, the
interpreter search, and the agent's own Python floor. Against the real sshd
of sshd_fixture, whose host interpreter has nothing extra on its path."""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

from conftest import write_tree
from fitsync import delta as delta_mod
from fitsync import patch as patch_mod
from fitsync import sshconn
from fitsync.errors import TransferFailed
from fitsync.remotes import open_remote
from fitsync.remotes import sftp as sftp_mod
from fitsync.remotes import sftp_agent
from fitsync.sums import PUSH_LAYOUT, file_block_list_digest
from sshd_fixture import home, sshd  # noqa: F401  (fixtures)
from test_sftp_mirror import edited, fits_file, sftp_url

N_DATA = 3_000_000


def test_the_fixture_host_is_stock(sshd, home, tmp_path):
    """What the rest of this file relies on: the host's python3 cannot import
    what a stock server lacks, so its agent makes STDLIB sums."""
    python = os.environ["FITSYNC_SSH_PYTHON"]
    for module in ("fitsync", "blake3", "xxhash", "numpy"):
        probe = subprocess.run(f"{python} -c 'import {module}'", shell=True, capture_output=True,
                               env={"PATH": "/usr/bin:/bin"})
        assert probe.returncode != 0, module
    (tmp_path / "r").mkdir()
    remote = open_remote(sftp_url(sshd, tmp_path / "r"))
    assert remote.agent_info()["signature"] == "stdlib"
    assert "blake3" not in remote.agent_info()["hashes"]


def test_the_agent_is_found_without_a_python_setting(sshd, home, tmp_path, monkeypatch):
    """No ``python`` setting: the host's PATH is searched (python3 first)."""
    monkeypatch.delenv("FITSYNC_SSH_PYTHON")
    sshconn.close_all()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.txt").write_bytes(b"x")
    remote = open_remote(sftp_url(sshd, tmp_path / "r"))
    info = remote.agent_info()
    assert info is not None and info["python"].startswith("3.")
    assert [e.path for e in remote.list()] == ["a.txt"]
    remote.close()


def test_a_host_without_any_python3_says_so(tmp_path):
    """The search's own failure message, as the host's shell would run it."""
    command = sftp_agent.agent_command(None, b"payload")
    empty = tmp_path / "bin"
    empty.mkdir()
    run = subprocess.run(["/bin/sh", "-c", command], env={"PATH": str(empty)}, capture_output=True, text=True,
                         input="")
    assert run.returncode == 127
    assert "no Python 3 found (tried python3, /usr/libexec/platform-python, python3.N)" in run.stderr


def test_a_named_python_that_is_missing_falls_back_to_whole_files_with_one_warning(sshd, home, tmp_path, cli,
                                                                                  monkeypatch):
    monkeypatch.setenv("FITSYNC_SSH_PYTHON", "/nonexistent/python3")
    sshconn.close_all()
    old = fits_file(N_DATA)
    new = edited(old, N_DATA)
    write_tree(tmp_path / "new", {"f.fits": new}, mtime=1_700_000_900.0)
    write_tree(tmp_path / "old", {"f.fits": old})
    result = cli("mirror", sftp_url(sshd, tmp_path / "new"), tmp_path / "old", "--json")
    assert result.code == 0, result.err
    assert (tmp_path / "old" / "f.fits").read_bytes() == new
    assert result.json()["bytes_transferred"] == len(new)  # no agent: whole file
    warnings = [line for line in result.err.splitlines() if "cannot run the fitsync agent" in line]
    assert len(warnings) == 1 and "whole-file transfers only" in warnings[0], result.err


def _corrupt(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_basis_block_corrupted_during_a_pull_is_caught_then_repaired(sshd, home, tmp_path, cli, monkeypatch):
    """The old copy changes between matching and patching: the built file
    fails the STDLIB digest, nothing replaces the copy, and the retry
    fetches the block it no longer holds."""
    old = fits_file(N_DATA)
    new = edited(old, N_DATA)
    write_tree(tmp_path / "new", {"f.fits": new}, mtime=1_700_000_900.0)
    write_tree(tmp_path / "old", {"f.fits": old})
    real_apply, calls = patch_mod.apply_recipe, []

    def corrupting_apply(recipe, basis_fd, read_source, out_fd, writer=None):
        calls.append(recipe.digest_algo)
        if len(calls) == 1:
            _corrupt(tmp_path / "old" / "f.fits", len(old) - 100_000)  # a data block the recipe copies
        return real_apply(recipe, basis_fd, read_source, out_fd, writer)

    monkeypatch.setattr(patch_mod, "apply_recipe", corrupting_apply)
    result = cli("mirror", sftp_url(sshd, tmp_path / "new"), tmp_path / "old", "--json")
    assert result.code == 0, result.err
    assert calls[0] == "sha256-blocks" and len(calls) >= 2
    assert (tmp_path / "old" / "f.fits").read_bytes() == new
    assert result.json()["bytes_transferred"] < 400_000  # still a delta


def test_a_remote_basis_corrupted_during_a_push_is_caught_then_repaired(sshd, home, tmp_path, cli, monkeypatch):
    """The host's old copy changes after it was signed: the agent's patch fails
    its digest check, the old copy stays, and the retry repairs it."""
    old = fits_file(N_DATA)
    new = edited(old, N_DATA)
    write_tree(tmp_path / "new", {"f.fits": new}, mtime=1_700_000_900.0)
    write_tree(tmp_path / "old", {"f.fits": old})
    real_signature, calls = sftp_mod.SftpRemote.block_signature, []

    def signature_then_rot(self, path, like=None, digest=True):
        sig = real_signature(self, path, like, digest)
        calls.append(sig.sums.name)
        if len(calls) == 1:
            _corrupt(tmp_path / "old" / "f.fits", len(old) - 100_000)
        return sig

    monkeypatch.setattr(sftp_mod.SftpRemote, "block_signature", signature_then_rot)
    result = cli("mirror", tmp_path / "new", sftp_url(sshd, tmp_path / "old"), "--json")
    assert result.code == 0, result.err
    assert calls[0] == "stdlib" and len(calls) >= 2
    assert (tmp_path / "old" / "f.fits").read_bytes() == new


def test_an_interrupted_push_patch_leaves_the_old_file_and_the_next_run_finishes(sshd, home, tmp_path, cli):
    """The link is lost while literals go up: nothing reaches the final name;
    the agent removes its temporary when its input ends (or, when sshd killed
    it first, the next run clears it), and the next run completes."""
    old = fits_file(N_DATA)
    new = edited(old, N_DATA)
    write_tree(tmp_path / "new", {"f.fits": new}, mtime=1_700_000_900.0)
    write_tree(tmp_path / "old", {"f.fits": old})
    remote = open_remote(sftp_url(sshd, tmp_path / "old"))
    sig = remote.block_signature("f.fits", like=str(tmp_path / "new" / "f.fits"), digest=False)
    # checked by a STDLIB digest of the new file, as the engine prepares a push to a stock host
    recipe = delta_mod.delta_recipe(sig, new, source_digest=file_block_list_digest(tmp_path / "new" / "f.fits"))
    recipe.digest_algo, recipe.layout = "sha256-blocks", PUSH_LAYOUT

    def literals_then_loss():
        yield new[:1000]
        raise ConnectionResetError("link lost mid-patch")

    with pytest.raises(TransferFailed, match="link lost mid-patch"):  # interrupted, not refused up front
        remote.apply_recipe("f.fits", recipe, literals_then_loss(), mtime=1_700_000_900.0,
                            expected_digest=recipe.digest)
    remote.close()
    sshconn.close_all()
    assert (tmp_path / "old" / "f.fits").read_bytes() == old
    run = cli("mirror", tmp_path / "new", sftp_url(sshd, tmp_path / "old"), "--json")
    assert run.code == 0, run.err
    assert (tmp_path / "old" / "f.fits").read_bytes() == new
    assert run.json()["bytes_transferred"] < 400_000  # a delta again
    assert not list((tmp_path / "old" / ".fitsync" / "tmp").glob("*"))


def test_the_agent_runs_on_python_3_6(tmp_path):
    """RHEL/CentOS 7 and 8 servers: vermin finds nothing in the agent or its
    bootstrap that needs more than Python 3.6."""
    agent = tmp_path / "agent.py"
    agent.write_bytes(sftp_agent.agent_payload())  # the one file the host runs, joined from its parts
    boot = tmp_path / "bootstrap.py"
    boot.write_text(sftp_agent._BOOTSTRAP)
    vermin = Path(sysconfig.get_path("scripts")) / "vermin"  # installed with the test extra
    run = subprocess.run([str(vermin), "--no-tips", "--violations", "-t=3.6-", str(agent),
                          str(boot)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Minimum required versions: 3.6" in run.stdout or "3.0" in run.stdout


@pytest.mark.parametrize("account", ["agent", "sftp-only"])
def test_a_symlinked_remote_directory_is_never_written_through(sshd, home, tmp_path, cli, account):
    """A push whose remote DST/sub is a symlink to a directory outside: the
    files under sub fail with a reason naming the symlink, the rest land, and
    the outside directory is unchanged, whether it is reached by a new file,
    an update by delta, or a delete."""
    port = sshd.port if account == "agent" else sshd.sftp_only_port
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    old = fits_file(N_DATA)
    write_tree(outside, {"victim.fits": old, "keep.txt": b"precious"})
    write_tree(src, {"sub/victim.fits": edited(old, N_DATA), "sub/new.txt": b"planted", "plain.txt": b"plain"},
               mtime=1_700_000_900.0)
    dst.mkdir()
    (dst / "sub").symlink_to(outside)
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    for flags in ((), ("--delete",), ("--checksum",)):
        run = cli("mirror", src, sftp_url(sshd, dst, port), "--json", *flags)
        assert run.code == 3, run.err
        failures = {f["path"]: f["reason"] for f in run.json()["failures"]}
        assert set(failures) == {"sub/victim.fits", "sub/new.txt"}, failures
        assert all("symlink" in reason for reason in failures.values()), failures
        assert {p.name: p.read_bytes() for p in outside.iterdir()} == before
        assert (dst / "plain.txt").read_bytes() == b"plain"
        assert "Traceback" not in run.err


def test_an_inplace_pull_from_a_stock_host_writes_only_the_change(sshd, home, tmp_path, cli):
    """--inplace with a stock host's STDLIB sums: the file keeps its inode, is
    verified against the SHA-256 block-list digest, and no journal is left."""
    old = fits_file(N_DATA)
    new = edited(old, N_DATA)
    write_tree(tmp_path / "new", {"f.fits": new}, mtime=1_700_000_900.0)
    write_tree(tmp_path / "old", {"f.fits": old})
    inode = os.stat(tmp_path / "old" / "f.fits").st_ino
    result = cli("mirror", sftp_url(sshd, tmp_path / "new"), tmp_path / "old", "--inplace", "--json", "--itemize")
    assert result.code == 0, result.err
    row = result.json()["files"][0]
    assert row["built"] == "in place" and row["bytes_moved"] < 400_000
    assert (tmp_path / "old" / "f.fits").read_bytes() == new
    assert os.stat(tmp_path / "old" / "f.fits").st_ino == inode
    assert not list((tmp_path / "old" / ".fitsync").glob("inplace/*"))

