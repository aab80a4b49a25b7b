"""audit against a manifest, and compare of two trees."""

import json
import os

from conftest import write_tree

FILES = {"a/1.fits": b"1" * 3000, "a/2.fits": b"2" * 3000, "b/3.txt": b"three", "b/4.txt": b"four"}


def _manifest(cli, root, path):
    assert cli("manifest", root, f"--output={path}").code == 0


def test_audit_clean_copy_exits_0(tmp_path, cli):
    write_tree(tmp_path / "t", FILES)
    _manifest(cli, tmp_path / "t", tmp_path / "m.jsonl")
    result = cli("audit", tmp_path / "t", f"--manifest={tmp_path / 'm.jsonl'}")
    assert result.code == 0
    assert "4 ok, 0 missing, 0 corrupt, 0 extra" in result.err


def test_audit_finds_missing_corrupt_and_extra(tmp_path, cli):
    t = tmp_path / "t"
    write_tree(t, FILES)
    _manifest(cli, t, tmp_path / "m.jsonl")
    os.unlink(t / "a/1.fits")
    (t / "a/2.fits").write_bytes(b"X" + b"2" * 2999)
    (t / "b/3.txt").write_bytes(b"thre")
    write_tree(t, {"c/extra.dat": b"?"})
    result = cli("audit", t, f"--manifest={tmp_path / 'm.jsonl'}", "--json")
    assert result.code == 1
    report = json.loads(result.out)["manifest"]
    assert report["ok"] == ["b/4.txt"]
    assert report["missing"] == ["a/1.fits"]
    assert [c["path"] for c in report["corrupt"]] == ["a/2.fits", "b/3.txt"]
    assert "BLAKE3" in report["corrupt"][0]["reason"] and "size" in report["corrupt"][1]["reason"]
    assert report["extra"] == ["c/extra.dat"]


def test_audit_uses_the_manifest_at_the_root_by_default(tmp_path, cli):
    t = tmp_path / "t"
    write_tree(t, FILES)
    _manifest(cli, t, t / "fitsync-manifest.jsonl")
    assert cli("audit", t).code == 0
    (t / "b/4.txt").write_bytes(b"FOUR")
    assert cli("audit", t).code == 1


def test_audit_without_a_manifest_says_what_to_do(tmp_path, cli):
    write_tree(tmp_path / "t", FILES)
    result = cli("audit", tmp_path / "t")
    assert result.code == 2 and "--manifest=FILE" in result.err


def test_audit_refuses_a_manifest_with_an_escaping_path(tmp_path, cli):
    write_tree(tmp_path / "t", FILES)
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"format": "fitsync-manifest", "version": 1}\n'
                   '{"path": "../../etc/passwd", "size": 1, "mtime": 0, "blake3": "' + "0" * 64 + '"}\n')
    result = cli("audit", tmp_path / "t", f"--manifest={bad}")
    assert result.code == 2 and "'..'" in result.err and "line 2" in result.err


def test_compare_is_silent_and_0_when_trees_agree(tmp_path, cli):
    write_tree(tmp_path / "A", FILES)
    write_tree(tmp_path / "B", FILES)
    result = cli("compare", tmp_path / "A", tmp_path / "B", "--checksum")
    assert result.code == 0 and result.out == "" and result.err == ""


def test_compare_reports_each_kind_and_writes_rclone_style_report(tmp_path, cli):
    a, b = tmp_path / "A", tmp_path / "B"
    write_tree(a, FILES)
    write_tree(b, FILES)
    os.unlink(b / "a/1.fits")
    write_tree(b, {"only_b.txt": b"b"})
    (b / "b/3.txt").write_bytes(b"THREE")  # same size, same mtime below: only --checksum sees it
    os.utime(b / "b/3.txt", (1_700_000_000, 1_700_000_000))
    report = tmp_path / "report.txt"
    result = cli("compare", a, b, f"--report={report}")
    assert result.code == 1
    assert f"FILES ON {a} THAT ARE NOT ON {b} (1):" in result.out
    assert "b/3.txt" not in result.out, "size and mtime agree"
    result = cli("compare", a, b, "--checksum", f"--report={report}", "--json")
    data = json.loads(result.out)
    assert data["only_a"] == ["a/1.fits"] and data["only_b"] == ["only_b.txt"]
    assert [d["path"] for d in data["differ"]] == ["b/3.txt"]
    assert report.read_text().splitlines() == ["+ a/1.fits", "= a/2.fits", "* b/3.txt", "= b/4.txt", "- only_b.txt"]


def test_compare_missing_side_is_an_error(tmp_path, cli):
    write_tree(tmp_path / "A", FILES)
    result = cli("compare", tmp_path / "A", tmp_path / "nope")
    assert result.code == 2 and "does not exist" in result.err


def test_audit_against_another_copy(tmp_path, cli):
    ref, copy = tmp_path / "ref", tmp_path / "copy"
    write_tree(ref, FILES)
    write_tree(copy, FILES)
    assert cli("audit", copy, f"--against={ref}").code == 0
    (copy / "a/1.fits").write_bytes(b"X" * 3000)
    os.unlink(copy / "b/4.txt")
    write_tree(copy, {"new.txt": b"n"})
    result = cli("audit", copy, f"--against={ref}", "--json")
    assert result.code == 1
    report = json.loads(result.out)["against"]
    assert [c["path"] for c in report["corrupt"]] == ["a/1.fits"]
    assert report["missing"] == ["b/4.txt"] and report["extra"] == ["new.txt"]
    assert report["ok"] == ["a/2.fits", "b/3.txt"]


def test_audit_with_manifest_and_fits_reads_once_and_reports_both(tmp_path, cli):
    """A flipped data byte under DATASUM: the digest and the FITS check both see it."""
    import shutil

    from conftest import SAMPLE

    copy = tmp_path / "copy"
    shutil.copytree(SAMPLE, copy)
    manifest = tmp_path / "m.jsonl"
    assert cli("manifest", SAMPLE, f"--output={manifest}").code == 0
    assert cli("audit", copy, f"--manifest={manifest}", "--fits").code == 0
    victim = copy / "2026-11-02/sci_0001.fits"
    data = bytearray(victim.read_bytes())
    data[2880 + 100] ^= 0x01
    victim.write_bytes(bytes(data))
    result = cli("audit", copy, f"--manifest={manifest}", "--fits", "--json")
    assert result.code == 1
    report = json.loads(result.out)["manifest"]
    assert [c["path"] for c in report["corrupt"]] == ["2026-11-02/sci_0001.fits"]
    assert [p["path"] for p in report["fits_problems"]] == ["2026-11-02/sci_0001.fits"]
    assert "DATASUM" in report["fits_problems"][0]["reason"] or "broken" in report["fits_problems"][0]["reason"]
