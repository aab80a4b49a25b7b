"""BagIt 1.0 (RFC 8493) tag files for a tree fitsync has hashed."""

from __future__ import annotations

import datetime as _dt
import os

from fitsync.errors import UsageError
from fitsync.formats.manifest import write_atomically


def write_bag_tags(bag_dir: str, payload_dir: str, entries, digests: dict[str, str]) -> None:
    """Write bagit.txt, manifest-sha512.txt and bag-info.txt into ``bag_dir``.

    RFC 8493 puts the payload in ``<bag>/data``; ``payload_dir`` must be that
    directory, so the manifest's paths resolve for any BagIt validator.
    """
    payload_rel = os.path.relpath(os.path.abspath(payload_dir), os.path.abspath(bag_dir)).replace(os.sep, "/")
    if payload_rel != "data":
        raise UsageError(
            f"a BagIt payload must be the bag's data/ directory; {payload_dir} is not {bag_dir}/data"
        )
    total = sum(e.size for e in entries)
    write_atomically(os.path.join(bag_dir, "bagit.txt"),
                     lambda out: out.write("BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"))
    write_atomically(
        os.path.join(bag_dir, "manifest-sha512.txt"),
        lambda out: out.writelines(f"{digests[e.path]} data/{_encode(e.path)}\n" for e in entries),
    )
    today = _dt.date.today().isoformat()
    write_atomically(
        os.path.join(bag_dir, "bag-info.txt"),
        lambda out: out.write(f"Bag-Software-Agent: fitsync\nBagging-Date: {today}\nPayload-Oxum: {total}.{len(entries)}\n"),
    )


def _encode(path: str) -> str:
    # RFC 8493 section 2.1.3: CR, LF and % are percent-encoded in manifest paths.
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
