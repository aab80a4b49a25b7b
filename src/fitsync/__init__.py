"""fitsync: mirror and check FITS astronomy archives, from Python or the command line.

Functions (each takes paths, URLs or NAME:path of a configured remote, as the CLI does):

    mirror(src, dst, ...)      make dst an exact, verified copy of src, moving only what changed
    manifest(root, ...)        BLAKE3 manifest of a tree (jsonl, b3sum, sha256sum, BagIt), optionally signed
    audit(target, ...)         check a copy against a manifest, another copy, or its own FITS structure
    compare(a, b, ...)         files only on a, only on b, differing, identical
    datasets(store, ...)       the productions of an IACT data store
    missing(src, ...)          which keys (tiles, nights) lack expected files
    open(location)             a Remote: list(), stat(), open_read(); a context manager

Selection(...) narrows the files of any of them; RemoteOptions(...) carries
credentials, trust and timeouts. Results are dataclasses with to_dict() (what
``--json`` prints). Errors are fitsync.errors.FitsyncError subclasses, each
with the CLI's exit_code. fitsync logs to logging.getLogger("fitsync") and
never prints. docs/api.md has examples.
"""

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type checkers see the real names; at run time they come from __getattr__
    from fitsync.api import audit, compare, datasets, manifest, mirror, missing, open, recover
    from fitsync.errors import FitsyncError
    from fitsync.options import RemoteOptions, Selection
    from fitsync.results import AuditResult, FileAction, ManifestResult, MirrorResult

__version__ = "0.1.0"

__all__ = [
    "mirror", "manifest", "audit", "compare", "datasets", "missing", "open", "recover",
    "Selection", "RemoteOptions", "MirrorResult", "ManifestResult", "AuditResult", "FileAction",
    "FitsyncError", "__version__",
]

# A library's logger: silent unless the application configures logging.
logging.getLogger("fitsync").addHandler(logging.NullHandler())

# The API is imported on first use, so that the CLI's start-up (which imports
# this package for __version__) does not pay for it.
_EXPORTS = {
    "mirror": "fitsync.api", "manifest": "fitsync.api", "audit": "fitsync.api", "compare": "fitsync.api",
    "datasets": "fitsync.api", "missing": "fitsync.api", "open": "fitsync.api", "recover": "fitsync.api",
    "Selection": "fitsync.options", "RemoteOptions": "fitsync.options",
    "MirrorResult": "fitsync.results", "ManifestResult": "fitsync.results", "AuditResult": "fitsync.results",
    "FileAction": "fitsync.results", "FitsyncError": "fitsync.errors",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fitsync' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))
