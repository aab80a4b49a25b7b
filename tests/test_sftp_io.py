"""The private paramiko methods the pipelined SFTP I/O rests on (remotes/sftp_io.py).

An upgrade of paramiko that changes them must fail here, by name, rather than
as a hang or a garbled read in the middle of a mirror."""

import inspect

import paramiko
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
