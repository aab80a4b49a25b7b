import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fitsync.errors import UnsafePath
from fitsync.paths import join_under, safe_relpath


@pytest.mark.parametrize("path, expected", [
    ("a/b.fits", "a/b.fits"),
    ("./a//b/./c", "a/b/c"),
    ("run_020136/hess_dl3_dr1_obs_id_020136.fits.gz", "run_020136/hess_dl3_dr1_obs_id_020136.fits.gz"),
])
def test_accepts_relative_paths(path, expected):
    assert safe_relpath(path) == expected


@pytest.mark.parametrize("path", [
    "", ".", "/etc/passwd", "../x", "a/../../x", "a/..", "a\x00b", "a\nb", "a\\..\\b", "x" * 300, "a/" + "y" * 256,
])
def test_refuses_escaping_or_malformed_paths(path):
    with pytest.raises(UnsafePath):
        safe_relpath(path)


@given(st.lists(st.sampled_from(["a", "b", ".", "/", "..", "\\", "\x00", "\n", "é"]), max_size=20).map("".join))
def test_accepted_paths_never_escape(path):
    try:
        rel = safe_relpath(path)
    except UnsafePath:
        return
    assert not rel.startswith("/")
    assert ".." not in rel.split("/")
    assert posixpath.normpath(rel) == rel


def test_join_under_refuses_a_symlinked_parent_leading_outside(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(UnsafePath):
        join_under(str(root), "link/file.fits")
    assert join_under(str(root), "sub/file.fits") == str(root / "sub" / "file.fits")
