import io
import json
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fitsync.errors import BadInput
from fitsync.formats.manifest import parse_manifest_bytes, read_manifest

from conftest import write_tree

FILES = {"a.fits": b"A" * 5000, "sub/b.txt": b"hello\n", "sub/deeper/c.bin": bytes(range(256)) * 40}


def test_manifest_round_trip_and_header(tmp_path, cli):
    write_tree(tmp_path / "root", FILES)
    out = tmp_path / "m.jsonl"
    result = cli("manifest", tmp_path / "root", f"--output={out}")
    assert result.code == 0
    lines = out.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "fitsync-manifest" and header["version"] == 1
    assert header["files"] == 3 and header["bytes"] == sum(map(len, FILES.values()))
    assert header["digest"] == "blake3" and header["created"].endswith("Z")
    manifest = read_manifest(str(out))
    import blake3

    for path, data in FILES.items():
        assert manifest.entries[path].blake3 == blake3.blake3(data).hexdigest()
        assert manifest.entries[path].size == len(data)


def test_manifest_does_not_list_itself(tmp_path, cli):
    write_tree(tmp_path, FILES)
    assert cli("manifest", tmp_path, f"--output={tmp_path / 'fitsync-manifest.jsonl'}").code == 0
    assert "fitsync-manifest.jsonl" not in read_manifest(str(tmp_path / "fitsync-manifest.jsonl")).entries


@pytest.mark.parametrize("text, message", [
    ("", "no header"),
    ('{"format": "other"}\n', "line 1"),
    ('{"format": "fitsync-manifest", "version": 99}\n', "version 99"),
    ('{"format": "fitsync-manifest", "version": 1}\nnot json\n', "line 2"),
    ('{"format": "fitsync-manifest", "version": 1}\n{"path": "../x", "size": 1, "blake3": "' + "0" * 64 + '"}\n',
     "line 2"),
    ('{"format": "fitsync-manifest", "version": 1}\n{"path": "/etc/x", "size": 1, "blake3": "' + "0" * 64 + '"}\n',
     "absolute"),
    ('{"format": "fitsync-manifest", "version": 1}\n{"path": "x", "size": -1, "blake3": "' + "0" * 64 + '"}\n',
     "size"),
    ('{"format": "fitsync-manifest", "version": 1}\n{"path": "x", "size": 1, "blake3": "zz"}\n', "blake3"),
    ('{"format": "fitsync-manifest", "version": 1, "files": 2}\n{"path": "x", "size": 1, "blake3": "' + "0" * 64
     + '"}\n', "truncated"),
])
def test_malformed_manifests_name_the_line(text, message):
    with pytest.raises(BadInput) as err:
        parse_manifest_bytes(text.encode(), "m.jsonl")
    assert message in str(err.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parser_never_crashes_on_garbage(data):
    try:
        parse_manifest_bytes(data, "fuzz")
    except BadInput:
        pass


def test_malformed_manifest_on_command_line_is_one_line_exit_2(tmp_path, cli):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "fitsync-manifest", "version": 1}\n{"path": 3}\n')
    write_tree(tmp_path / "t", FILES)
    result = cli("audit", tmp_path / "t", f"--manifest={bad}")
    assert result.code == 2
    assert "line 2" in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_b3sum_format_is_accepted_by_b3sum(tmp_path, cli):
    write_tree(tmp_path / "root", FILES)
    out = tmp_path / "sums.b3"
    assert cli("manifest", tmp_path / "root", f"--output={out}", "--format=b3sum").code == 0
    check = subprocess.run(["b3sum", "--check", str(out)], cwd=tmp_path / "root", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    (tmp_path / "root" / "a.fits").write_bytes(b"B" * 5000)
    assert subprocess.run(["b3sum", "--check", str(out)], cwd=tmp_path / "root", capture_output=True).returncode == 1


def test_sha256sum_format_is_accepted_by_sha256sum(tmp_path, cli):
    write_tree(tmp_path / "root", FILES)
    out = tmp_path / "sums.sha256"
    assert cli("manifest", tmp_path / "root", f"--output={out}", "--format=sha256sum").code == 0
    check = subprocess.run(["sha256sum", "-c", str(out)], cwd=tmp_path / "root", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_bagit_tags_validate_with_bagit_python(tmp_path, cli):
    import bagit

    write_tree(tmp_path / "bag" / "data", FILES)
    assert cli("manifest", tmp_path / "bag" / "data", "--format=bagit").code == 0
    info = (tmp_path / "bag" / "bag-info.txt").read_text()
    assert f"Payload-Oxum: {sum(map(len, FILES.values()))}.3" in info
    bag = bagit.Bag(str(tmp_path / "bag"))
    bag.validate()
    (tmp_path / "bag" / "data" / "a.fits").write_bytes(b"C" * 5000)
    with pytest.raises(bagit.BagValidationError):
        bagit.Bag(str(tmp_path / "bag")).validate()
