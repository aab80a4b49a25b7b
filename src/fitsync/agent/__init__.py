"""fitsync's remote agent: one stdlib-only program, kept here in parts.

The agent runs on the far side of an SSH connection, where fitsync need not
be installed, so it travels as the text of a single file (see
remotes/sftp_agent.py: sent once, cached on the host and checked by its
SHA-256 before every use). That file is ``source()``: the parts in
``parts/``, joined in the order of their names, each a job of its own
(framing, hashing, operations, the destination through descriptors, block
signatures, FITS layout, main). The parts are not modules: they share one
namespace once joined, so none imports another.

This package runs the very same text, so ``fitsync.agent.Channel``,
``fitsync.agent.main`` and the rest are what the host runs, byte for byte.
It runs it at the first such name asked for, not on import: the SSH client
needs only ``source()`` (and the framing, from fitsync.wire), and compiling
the agent would cost every SSH run several milliseconds for nothing.
"""

import threading
from importlib import resources


def source() -> bytes:
    """The agent as the single file the remote host runs: its first part (the
    docstring, framing), then fitsync/wire.py (the wire formats fitsync uses
    too, written once), then the other parts."""
    parts = sorted((p for p in resources.files(__name__).joinpath("parts").iterdir() if p.name.endswith(".py")),
                   key=lambda p: p.name)
    wire = resources.files("fitsync").joinpath("wire.py")
    texts = [p.read_bytes() for p in parts]
    return b"\n\n".join([texts[0], wire.read_bytes(), *texts[1:]])


_RUN_LOCK = threading.Lock()
_ran = False


def __getattr__(name: str):
    """A name of the agent (PEP 562): the agent's text is run into this
    package once, at the first name asked for."""
    global _ran
    with _RUN_LOCK:
        if not _ran:
            doc = __doc__
            exec(compile(source(), "<fitsync agent>", "exec"), globals())  # noqa: S102 - the shipped text
            globals()["__doc__"] = doc  # the agent's own docstring (its protocol) stays in source()
            _ran = True
    try:
        return globals()[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
