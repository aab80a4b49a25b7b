"""HTTP release updates: fitsync (manifest with block signatures) vs zsync (issue 7), run by hand.

Usage:
  bench_http.py [--mib=N] [--rounds=N] [--skip-hess] [--keep] [--cold]

Options:
  --mib=N      Size of the FITS image's data in MiB [default: 1024].
  --rounds=N   Interleaved rounds per comparison [default: 3].
  --skip-hess  Do not measure the manifest overhead of the H.E.S.S. release.
  --keep       Keep benchmarks/work/http (the 1 GiB files) afterwards.
  --cold       Drop the old copy (fitsync's DST file, zsync's seed) from the
               page cache before each run, as an archive's old files are
               (the new file and control files stay warm on the server).

For each of the three edits of a 1 GiB FITS image (a header keyword value
changed; a keyword added so the header grows by 2880 bytes; 1 MiB
overwritten in the middle of the data) the edited file is published in one
local HTTP server (tests/http_fixture.py: Range, multi-range, sendfile) with
both a fitsync manifest (--blocks) and a .zsync control file. Then, A B A B:

  A  fitsync mirror http://127.0.0.1:PORT/rel/ DST   (DST holds the old file and
     the old release's manifest, as a fitsync mirror of the old release does)
  A' the same with no manifest in DST (an old copy made by other means: the
     old file is hashed to find its blocks)
  B  zsync -i OLD -o OUT http://127.0.0.1:PORT/zs/image.fits.zsync

Each run starts from a fresh copy of the old file with the page cache warm;
each tool first runs once untimed per edit (the first run after the edited
file was written is an outlier), and every timed run is printed.
Bytes are the bodies the server sent, control files (manifest / .zsync)
included. Also: block-signature generation (``fitsync manifest --blocks``
vs ``zsyncmake``) and the manifest's size as a percentage of the data, for
the 1 GiB file and the H.E.S.S. DL3 DR1 release. Medians are printed.
Targets: bytes <= zsync's, wall time <= 0.3 x zsync's (A against B; A'
is printed beside).
"""

from __future__ import annotations

import filecmp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from http_fixture import HttpFixture  # noqa: E402
from timing import installed_env, run_timed, table, warm  # noqa: E402

WORK = os.path.join(HERE, "work", "http")
HESS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data", "hess-dl3-dr1")
FITSYNC = [sys.executable, "-m", "fitsync"]
MANIFEST = "fitsync-manifest.jsonl"
CARD, RECORD = 80, 2880
EDITS = ("header value changed", "header grown by 2880 bytes", "1 MiB overwritten mid-data")


# -- the files ---------------------------------------------------------------------

def full_header(side_x: int, side_y: int) -> bytes:
    """A primary header that fills its records exactly (END is the last
    card), so that one more keyword grows it by one 2880-byte record."""
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                  -32",
        "NAXIS   =                    2",
        f"NAXIS1  = {side_x:>20}",
        f"NAXIS2  = {side_y:>20}",
        "OBJECT  = 'CRAB    '",
        "TELESCOP= 'HESS    '",
    ]
    while (len(cards) + 1) % (RECORD // CARD):
        cards.append(f"COMMENT padding card {len(cards)}")
    cards.append("END")
    return b"".join(c.ljust(CARD).encode("ascii") for c in cards)


def make_old(path: str, mib: int) -> None:
    side_x = 8192
    side_y = (mib << 20) // (4 * side_x)
    header = full_header(side_x, side_y)
    size = len(header) + side_x * side_y * 4
    size += -size % RECORD
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    import numpy as np

    rng = np.random.default_rng(1)
    with open(path + ".tmp", "wb") as f:
        f.write(header)
        remaining = side_x * side_y * 4
        while remaining:
            n = min(remaining, 64 << 20)
            f.write(rng.bytes(n))
            remaining -= n
        f.write(b"\0" * (-f.tell() % RECORD))
    os.replace(path + ".tmp", path)


def make_edit(old: str, new: str, which: int) -> None:
    """Write ``new`` as ``old`` with edit number ``which`` applied."""
    with open(old, "rb") as f:
        header = f.read(RECORD)
    if which == 0:
        shutil.copyfile(old, new)
        with open(new, "r+b") as f:
            f.seek(header.index(b"OBJECT  = "))
            f.write(b"OBJECT  = 'VELA    '".ljust(CARD))
    elif which == 1:
        end = header.index(b"END" + b" " * 77)
        grown = header[:end] + b"HISTORY one keyword more".ljust(CARD) + b"END".ljust(CARD)
        grown = grown.ljust(2 * RECORD, b" ")
        with open(old, "rb") as src, open(new, "wb") as dst:
            dst.write(grown)
            src.seek(RECORD)
            shutil.copyfileobj(src, dst, 16 << 20)
    else:
        shutil.copyfile(old, new)
        with open(new, "r+b") as f:
            f.seek(os.path.getsize(new) // 2)
            f.write(os.urandom(1 << 20))
    os.utime(new, (1_700_086_400, 1_700_086_400))


# -- runs ---------------------------------------------------------------------------

class Case:
    """One tool's timed runs for one edit, with the bytes each run cost."""

    def __init__(self, name: str, srv: HttpFixture, prepare, command, output: str, expected: str):
        self.name, self.srv, self.prepare, self.command = name, srv, prepare, command
        self.output, self.expected = output, expected
        self.seconds: list[float] = []
        self.bytes: list[int] = []

    def run_once(self) -> None:
        self.prepare()
        self.srv.counters.reset()
        self.seconds.append(run_timed(self.command))
        self.bytes.append(self.srv.counters.body_bytes)
        if not filecmp.cmp(self.output, self.expected, shallow=False):
            raise SystemExit(f"{self.name} produced a copy that differs from the new file")


COLD = False  # --cold


def fresh_copy(old: str, target: str, *also_warm: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    for stale in (target, target + ".part", target + ".zs-old"):
        if os.path.exists(stale):
            os.unlink(stale)
    shutil.copyfile(old, target)
    os.utime(target, (1_600_000_000, 1_600_000_000))
    os.sync()  # the copy's writeback must not land inside the timed run
    warm(target, *also_warm)
    if COLD:
        fd = os.open(target, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def compare_edit(srv: HttpFixture, site: str, old: str, old_manifest: str, which: int, rounds: int) -> list:
    rel = os.path.join(site, "rel")
    new = os.path.join(rel, "image.fits")
    make_edit(old, new, which)
    subprocess.run(FITSYNC + ["manifest", rel, "--blocks", "--no-fits", "--quiet",
                              f"--output={os.path.join(rel, MANIFEST)}"], check=True)
    zs = os.path.join(site, "zs")
    os.makedirs(zs, exist_ok=True)
    control = os.path.join(zs, "image.fits.zsync")
    subprocess.run(["zsyncmake", "-u", f"{srv.url}/rel/image.fits", "-o", control, new], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dst = os.path.join(WORK, "dst-fitsync")
    out_zsync = os.path.join(WORK, "dst-zsync", "image.fits")
    seed = os.path.join(WORK, "dst-zsync", "seed.fits")
    env = {k: v for k, v in installed_env().items() if not k.lower().endswith("_proxy")}

    def prepare_fitsync(recorded: bool):
        os.makedirs(dst, exist_ok=True)  # the first round starts from nothing
        shutil.rmtree(os.path.join(dst, ".fitsync"), ignore_errors=True)
        for name in (MANIFEST,):
            if os.path.exists(os.path.join(dst, name)):
                os.unlink(os.path.join(dst, name))
        if recorded:
            shutil.copyfile(old_manifest, os.path.join(dst, MANIFEST))
        fresh_copy(old, os.path.join(dst, "image.fits"), new, os.path.join(rel, MANIFEST))

    def prepare_zsync():
        if os.path.exists(out_zsync):
            os.unlink(out_zsync)
        fresh_copy(old, seed, new, control)

    def mirror():
        subprocess.run(FITSYNC + ["mirror", f"{srv.url}/rel/", dst, "--quiet"], check=True, env=env)

    cases = [
        Case("fitsync", srv, lambda: prepare_fitsync(True), mirror, os.path.join(dst, "image.fits"), new),
        Case("fitsync-no-manifest", srv, lambda: prepare_fitsync(False), mirror, os.path.join(dst, "image.fits"), new),
        Case("zsync", srv, prepare_zsync,
             lambda: subprocess.run(["zsync", "-q", "-i", seed, "-o", out_zsync, f"{srv.url}/zs/image.fits.zsync"],
                                    check=True, env=env, cwd=os.path.dirname(out_zsync),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             out_zsync, new),
    ]
    for case in cases:  # one untimed run each: the first after writing the edit is an outlier
        case.run_once()
        case.seconds.clear()
        case.bytes.clear()
    for _ in range(rounds):
        for case in cases:
            case.run_once()
    a, unrecorded, b = cases
    for case in cases:
        print(f"  {EDITS[which]}: {case.name} runs " + " ".join(f"{t:.2f}" for t in case.seconds), flush=True)
    ta, tu, tb = (statistics.median(c.seconds) for c in cases)
    ba, bb = statistics.median(a.bytes), statistics.median(b.bytes)
    return [EDITS[which], f"{ba:,.0f}", f"{bb:,.0f}", f"{ba / bb:.2f}", f"{ta:.2f}", f"{tu:.2f}", f"{tb:.2f}",
            f"{ta / tb:.2f}", f"{tu / tb:.2f}",
            f"{os.path.getsize(os.path.join(rel, MANIFEST)):,}", f"{os.path.getsize(control):,}"]


def old_release_manifest(old: str) -> str:
    """The manifest a mirror of the old release holds: the old file as
    image.fits with the mtime fresh_copy gives the destination's copy."""
    oldrel = os.path.join(WORK, "old-release")
    os.makedirs(oldrel, exist_ok=True)
    image = os.path.join(oldrel, "image.fits")
    if not os.path.exists(image):
        os.link(old, image)  # the same bytes; only its mtime is looked at
    os.utime(image, (1_600_000_000, 1_600_000_000))
    path = os.path.join(WORK, "old-" + MANIFEST)
    subprocess.run(FITSYNC + ["manifest", oldrel, "--blocks", "--no-fits", "--quiet", f"--output={path}"], check=True)
    return path


def signature_generation(site: str, rounds: int) -> list:
    rel = os.path.join(site, "rel")
    new = os.path.join(rel, "image.fits")
    out = tempfile.mkdtemp(prefix="bench-http-")
    times = {"fitsync": [], "zsyncmake": []}
    for _ in range(rounds):
        warm(new)
        times["fitsync"].append(run_timed(FITSYNC + ["manifest", rel, "--blocks", "--no-fits", "--quiet",
                                                    f"--output={os.path.join(out, MANIFEST)}"]))
        warm(new)
        times["zsyncmake"].append(run_timed(["zsyncmake", "-u", "x", "-o", os.path.join(out, "x.zsync"), new]))
    shutil.rmtree(out)
    a, b = statistics.median(times["fitsync"]), statistics.median(times["zsyncmake"])
    return ["manifest --blocks vs zsyncmake", f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}"]


def manifest_overhead(root: str, label: str) -> list:
    out = tempfile.mkdtemp(prefix="bench-http-")
    path = os.path.join(out, MANIFEST)
    subprocess.run(FITSYNC + ["manifest", root, "--blocks", "--no-fits", "--quiet", f"--output={path}"], check=True)
    data = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(root) for n in names
               if n not in (MANIFEST, MANIFEST + ".sig"))
    size = os.path.getsize(path)
    plain = os.path.join(out, "plain.jsonl")
    subprocess.run(FITSYNC + ["manifest", root, "--no-fits", "--quiet", f"--output={plain}"], check=True)
    plain_size = os.path.getsize(plain)
    shutil.rmtree(out)
    return [label, f"{data:,}", f"{size:,}", f"{100 * size / data:.3f} %", f"{100 * plain_size / data:.3f} %"]


def main() -> None:
    from docopt import docopt

    global COLD
    opts = docopt(__doc__)
    mib, rounds = int(opts["--mib"]), int(opts["--rounds"])
    COLD = bool(opts["--cold"])
    os.makedirs(WORK, exist_ok=True)
    site = os.path.join(WORK, "site")
    os.makedirs(os.path.join(site, "rel"), exist_ok=True)
    old = os.path.join(WORK, "old.fits")
    make_old(old, mib)
    old_manifest = old_release_manifest(old)
    rows = []
    with HttpFixture(site) as srv:
        for which in range(len(EDITS)):
            rows.append(compare_edit(srv, site, old, old_manifest, which, rounds))
            print(rows[-1], flush=True)
    print(table(rows, ("edit", "fitsync bytes", "zsync bytes", "ratio", "fitsync s", "no-manifest s", "zsync s",
                       "ratio", "no-manifest ratio", "manifest bytes", ".zsync bytes")))
    print()
    gen = [signature_generation(site, rounds)]
    print(table(gen, ("block signatures", "fitsync s", "zsyncmake s", "ratio")))
    print()
    overhead = [manifest_overhead(os.path.join(site, "rel"), f"{mib} MiB FITS image")]
    if not opts["--skip-hess"] and os.path.isdir(HESS):
        overhead.append(manifest_overhead(HESS, "H.E.S.S. DL3 DR1"))
    print(table(overhead, ("manifest overhead", "data bytes", "manifest --blocks bytes", "% of data",
                           "without --blocks")))
    if not opts["--keep"]:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
