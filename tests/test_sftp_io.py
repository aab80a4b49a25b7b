"""The private paramiko methods the pipelined SFTP I/O rests on (remotes/sftp_io.py).

An upgrade of paramiko that changes them must fail here, by name, rather than
as a hang or a garbled read in the middle of a mirror."""

import inspect

import paramiko
import pytest
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_WRITE, int64


def test_the_private_request_machinery_is_there_with_the_signatures_used():
    client = paramiko.SFTPClient
    assert list(inspect.signature(client._async_request).parameters)[:3] == ["self", "fileobj", "t"]
    assert list(inspect.signature(client._read_response).parameters)[:2] == ["self", "waitfor"]
    assert list(inspect.signature(client._convert_status).parameters) == ["self", "msg"]
    assert (CMD_READ, CMD_WRITE, CMD_DATA) == (5, 6, 103)  # SFTP v3 packet types
    assert int64(7) == 7


def test_a_reply_for_a_registered_object_is_handed_to_its_async_response():
    """paramiko delivers a reply to ``fileobj._async_response(t, msg, num)``
    when the request was made with a ``fileobj`` (what _Replies relies on)."""
    source = inspect.getsource(paramiko.SFTPClient._read_response)
    assert "_async_response" in source


# -- the record of a resumable upload (remotes/sftp_resume.py) ------------------------------

from hypothesis import given, strategies as st  # noqa: E402

from fitsync.remotes import sftp_resume  # noqa: E402


@given(st.integers(min_value=0, max_value=10**20 - 1))
def test_a_record_reads_back_as_written(acknowledged):
    assert sftp_resume._parse_record(sftp_resume._record(acknowledged)) == acknowledged


@given(st.binary(max_size=40))
def test_anything_else_in_a_record_means_nothing_was_kept(text):
    value = sftp_resume._parse_record(text)
    assert value == 0 or sftp_resume._record(value) == text


@pytest.mark.parametrize("key", ["", "../x", "a/b", "a.b", "ab\0"])
def test_a_resume_key_cannot_name_a_path(key):
    with pytest.raises(ValueError):
        sftp_resume.partial_paths("/root", key)
