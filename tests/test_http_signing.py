"""Signed release manifests: keygen, signing, and refusing what does not verify."""

from __future__ import annotations

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import write_tree
from fitsync.errors import BadInput, VerificationFailed
from fitsync.formats.manifest import DEFAULT_NAME
from fitsync.release import ReleaseRemote, release_source
from fitsync.remotes.http import HttpRemote
from fitsync.remotes.local import LocalRemote
from fitsync.signing import (
    SignatureRejected,
    generate_key_pair,
    load_private_key,
    sign_manifest_file,
    verify_manifest_bytes,
    verify_manifest_file,
)
from http_fixture import HttpFixture

_FUZZ_KEY = Ed25519PrivateKey.generate()  # the fuzz test's trusted key
DATA = {"a.fits": b"A" * 20_000, "dir/b.dat": b"B" * 5_000, "dir/c.dat": b"C" * 100}


@pytest.fixture
def keys(tmp_path):
    generate_key_pair(str(tmp_path / "release.key"))
    generate_key_pair(str(tmp_path / "other.key"))
    return tmp_path / "release.key", tmp_path / "other.key"


@pytest.fixture
def release(tmp_path, keys, cli):
    """A signed release tree under site/rel, made with the CLI as an author would."""
    root = tmp_path / "site" / "rel"
    write_tree(root, DATA)
    result = cli("manifest", root, "--no-fits", "--quiet", f"--output={root / DEFAULT_NAME}", f"--sign={keys[0]}")
    assert result.code == 0, result.err
    return root


def _remote(url: str, pub) -> HttpRemote:
    remote = HttpRemote(url, retries=1, verify_key=str(pub))
    remote.retry.base_delay = 0.01
    return remote


# -- keys and files ------------------------------------------------------------------

def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path, cli):
    key = tmp_path / "k"
    result = cli("keygen", key)
    assert result.code == 0, result.err
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in result.err and "key id" in result.err
    again = cli("keygen", key)
    assert again.code == 2 and "already exists" in again.err
    assert cli("keygen", key, "--force").code == 0


def test_sign_and_verify_round_trip_and_signature_format(tmp_path, keys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"format": "fitsync-manifest", "version": 1}\n')
    sig = sign_manifest_file(str(manifest), str(keys[0]))
    record = json.loads(open(sig).read())
    assert record["format"] == "fitsync-manifest-signature" and record["algorithm"] == "ed25519"
    assert record["manifest_size"] == manifest.stat().st_size
    verify_manifest_file(str(manifest), str(keys[0]) + ".pub")


def test_tampered_manifest_is_refused(tmp_path, keys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"format": "fitsync-manifest", "version": 1}\n{"path": "x"}\n')
    sign_manifest_file(str(manifest), str(keys[0]))
    manifest.write_bytes(manifest.read_bytes().replace(b'"x"', b'"y"'))
    with pytest.raises(SignatureRejected, match="modified after it was signed"):
        verify_manifest_file(str(manifest), str(keys[0]) + ".pub")


def test_manifest_signed_with_another_key_is_refused(tmp_path, keys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"format": "fitsync-manifest", "version": 1}\n')
    sign_manifest_file(str(manifest), str(keys[1]))
    with pytest.raises(SignatureRejected, match="signed by another key"):
        verify_manifest_file(str(manifest), str(keys[0]) + ".pub")


def test_forged_signature_with_the_right_key_id_is_refused(tmp_path, keys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"format": "fitsync-manifest", "version": 1}\n')
    sig = sign_manifest_file(str(manifest), str(keys[0]))
    record = json.loads(open(sig).read())
    record["signature"] = record["signature"][:10] + ("A" if record["signature"][10] != "A" else "B") + \
        record["signature"][11:]
    open(sig, "w").write(json.dumps(record))
    with pytest.raises(SignatureRejected, match="does not verify"):
        verify_manifest_file(str(manifest), str(keys[0]) + ".pub")


@pytest.mark.parametrize("content", [b"", b"not json", b'{"format": "other"}', b"\xff" * 10])
def test_garbage_signature_file_is_refused(tmp_path, keys, content):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"{}\n")
    (tmp_path / "m.jsonl.sig").write_bytes(content)
    with pytest.raises(SignatureRejected):
        verify_manifest_file(str(manifest), str(keys[0]) + ".pub")


def test_missing_signature_is_refused(tmp_path, keys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"{}\n")
    with pytest.raises(SignatureRejected, match="no signature"):
        verify_manifest_file(str(manifest), str(keys[0]) + ".pub")


def test_wrong_kind_of_key_file_is_explained(tmp_path, keys):
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(BadInput, match="not an Ed25519 private key"):
        load_private_key(str(tmp_path / "junk"))
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"{}\n")
    with pytest.raises(BadInput, match="not an Ed25519 public key"):
        verify_manifest_file(str(manifest), str(tmp_path / "junk"))


def test_openssh_ed25519_public_key_is_accepted(tmp_path, keys):
    from cryptography.hazmat.primitives import serialization

    key = load_private_key(str(keys[0]))
    ssh_pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (tmp_path / "ssh.pub").write_bytes(ssh_pub + b" someone@host\n")
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"{}\n")
    sign_manifest_file(str(manifest), str(keys[0]))
    verify_manifest_file(str(manifest), str(tmp_path / "ssh.pub"))


# -- over HTTP -------------------------------------------------------------------------

def test_signed_release_over_http_lists_and_reads(release, keys):
    with HttpFixture(str(release.parent)) as srv, _remote(srv.url + "/rel/", str(keys[0]) + ".pub") as remote:
        listed = {e.path for e in remote.list()}
        assert listed == set(DATA) | {DEFAULT_NAME, DEFAULT_NAME + ".sig"}
        with remote.open_read("a.fits") as f:
            assert f.read() == DATA["a.fits"]


def test_tampered_manifest_on_the_server_is_refused(release, keys):
    manifest = release / DEFAULT_NAME
    manifest.write_bytes(manifest.read_bytes().replace(b'"size": 100', b'"size": 101'))
    with HttpFixture(str(release.parent)) as srv, _remote(srv.url + "/rel/", str(keys[0]) + ".pub") as remote:
        with pytest.raises(SignatureRejected, match="modified after it was signed"):
            list(remote.list())


def test_release_signed_by_another_key_is_refused_over_http(release, keys):
    sign_manifest_file(str(release / DEFAULT_NAME), str(keys[1]))
    with HttpFixture(str(release.parent)) as srv, _remote(srv.url + "/rel/", str(keys[0]) + ".pub") as remote:
        with pytest.raises(SignatureRejected, match="another key"):
            list(remote.list())


def test_unsigned_server_is_refused_when_a_key_is_required(release, keys):
    os.unlink(release / (DEFAULT_NAME + ".sig"))
    with HttpFixture(str(release.parent)) as srv, _remote(srv.url + "/rel/", str(keys[0]) + ".pub") as remote:
        with pytest.raises(SignatureRejected, match="not signed"):
            list(remote.list())
    os.unlink(release / DEFAULT_NAME)
    with HttpFixture(str(release.parent)) as srv, _remote(srv.url + "/rel/", str(keys[0]) + ".pub") as remote:
        with pytest.raises(SignatureRejected, match="nothing to verify"):
            list(remote.list())


def test_tampered_data_file_is_refused_when_read(release, keys):
    (release / "dir" / "b.dat").write_bytes(b"X" + DATA["dir/b.dat"][1:])  # same size, other bytes
    with HttpFixture(str(release.parent)) as srv, _remote(srv.url + "/rel/", str(keys[0]) + ".pub") as remote:
        with pytest.raises(VerificationFailed, match="does not match the signed manifest"):
            with remote.open_read("dir/b.dat") as f:
                f.read()


def test_mirror_of_signed_release_refuses_a_tampered_file(release, keys, tmp_path, cli):
    (release / "dir" / "b.dat").write_bytes(b"X" + DATA["dir/b.dat"][1:])
    dst = tmp_path / "mirror"
    with HttpFixture(str(release.parent)) as srv:
        result = cli("mirror", srv.url + "/rel/", dst, "--json", "--retries=0", f"--verify-key={keys[0]}.pub")
    assert result.code == 3, result.err
    summary = result.json()
    assert [f["path"] for f in summary["failures"]] == ["dir/b.dat"]
    assert not (dst / "dir" / "b.dat").exists()  # never under its final name
    assert (dst / "a.fits").read_bytes() == DATA["a.fits"]


def test_mirror_refuses_a_tampered_manifest_before_copying_anything(release, keys, tmp_path, cli):
    manifest = release / DEFAULT_NAME
    manifest.write_bytes(manifest.read_bytes() + b"\n")
    dst = tmp_path / "mirror"
    with HttpFixture(str(release.parent)) as srv:
        result = cli("mirror", srv.url + "/rel/", dst, f"--verify-key={keys[0]}.pub")
    assert result.code == 2
    assert "modified after it was signed" in result.err and "Traceback" not in result.err
    assert not dst.exists() or not any(p.is_file() for p in dst.rglob("*") if ".fitsync" not in p.parts)


def test_signed_mirror_copies_manifest_and_signature_verbatim(release, keys, tmp_path, cli):
    dst = tmp_path / "mirror"
    with HttpFixture(str(release.parent)) as srv:
        result = cli("mirror", srv.url + "/rel/", dst, "--json", f"--verify-key={keys[0]}.pub")
    assert result.code == 0, result.err
    for name in list(DATA) + [DEFAULT_NAME, DEFAULT_NAME + ".sig"]:
        assert (dst / name).read_bytes() == (release / name).read_bytes()
    # The mirror is itself a verifiable release.
    verify_manifest_file(str(dst / DEFAULT_NAME), str(keys[0]) + ".pub")


def test_release_source_wraps_a_plain_remote_when_a_key_is_given(release, keys):
    """The same verification for any remote (SFTP, Dropbox): here a local tree."""
    local = LocalRemote(str(release))
    assert release_source(local) is local  # no key: a local tree is listed as it is
    wrapped = release_source(local, f"{keys[0]}.pub")
    assert isinstance(wrapped, ReleaseRemote)
    assert {e.path for e in wrapped.list()} == set(DATA) | {DEFAULT_NAME, DEFAULT_NAME + ".sig"}
    (release / "a.fits").write_bytes(b"Z" * len(DATA["a.fits"]))
    with pytest.raises(VerificationFailed):
        with wrapped.open_read("a.fits") as f:
            f.read()
    sign_manifest_file(str(release / DEFAULT_NAME), str(keys[1]))
    with pytest.raises(SignatureRejected):
        release_source(local, f"{keys[0]}.pub")


def test_audit_of_a_signed_mirror(release, keys, tmp_path, cli):
    dst = tmp_path / "mirror"
    with HttpFixture(str(release.parent)) as srv:
        assert cli("mirror", srv.url + "/rel/", dst, f"--verify-key={keys[0]}.pub").code == 0
    pub = f"--verify-key={keys[0]}.pub"
    assert cli("audit", dst, pub).code == 0
    (dst / "dir" / "c.dat").write_bytes(b"D" * 100)  # a file that no longer matches
    assert cli("audit", dst, pub).code == 1
    other = cli("audit", dst, f"--verify-key={keys[1]}.pub")
    assert other.code == 2 and "another key" in other.err


@settings(max_examples=80, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=300),
    st.dictionaries(st.sampled_from(["format", "version", "algorithm", "signature", "key_id"]),
                    st.one_of(st.text(max_size=90), st.integers(), st.none()), max_size=5)
    .map(lambda d: json.dumps({"format": "fitsync-manifest-signature", **d}).encode()),
))
def test_any_signature_file_content_is_refused_cleanly(data):
    """Whatever a hostile server puts in the .sig, the answer is a SignatureRejected, never a crash."""
    key = _FUZZ_KEY.public_key()
    with pytest.raises(SignatureRejected):
        verify_manifest_bytes(b"{}\n", data, key)
