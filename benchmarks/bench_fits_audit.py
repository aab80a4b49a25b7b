"""Benchmark and evidence for `fitsync audit --fits` (run by hand).

Usage:
    bench_fits_audit.py speed [--size-mib=N] [--repeats=N] [--tmp=DIR]
    bench_fits_audit.py gzip [--repeats=N]
    bench_fits_audit.py flips [--deflate-flips=N] [--jobs=N]
    bench_fits_audit.py table

Options:
    --size-mib=N       size of the FITS file for "speed" [default: 1024]
    --repeats=N        interleaved timed runs per contender [default: 5]
    --tmp=DIR          directory for the temporary file (default: the system's)
    --deflate-flips=N  random deflate-stream changes per file [default: 30]
    --jobs=N           processes for "flips" [default: 2]

speed: a FITS file with CHECKSUM/DATASUM (made with astropy in a temporary
  directory), fitsync's check against `b3sum` on the same file, warm cache.
gzip:  the H.E.S.S. DL3 DR1 release (107 .fits.gz): fitsync against `gzip -t`.
  Both timings are interleaved, each run preceded by reading the inputs once
  more (so the cache is warm for both alike); medians are reported.
flips: every file of the release, a single byte changed at every gzip header
  and trailer byte (mask 0xFF and one random bit) and at random deflate
  offsets: each change must be detected, or leave the FITS bytes identical.
table: the detection table of docs/fits-audit.md (fitsync and astropy) from
  the corruption corpus of tests/test_fits_corpus.py.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))
RELEASE = REPO.parent / "shared/data/hess-dl3-dr1"

from docopt import docopt  # noqa: E402

from fitsync import fits_gzip, fitsaudit  # noqa: E402


def read_through(paths) -> None:
    """Read every input once, so each timed run starts from the same warm cache."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(contenders: dict, inputs, repeats: int) -> dict:
    """Median seconds per contender; the order rotates each round."""
    times = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            read_through(inputs)
            times[name].append(timed(contenders[name]))
    return {name: statistics.median(values) for name, values in times.items()}


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def make_big_fits(path: str, size_mib: int) -> None:
    import numpy as np
    from astropy.io import fits

    side = int((size_mib * (1 << 20) // 4) ** 0.5)
    data = np.random.default_rng(0).integers(-(2**31), 2**31 - 1, size=(side, side), dtype=np.int32)
    fits.PrimaryHDU(data).writeto(path, checksum=True)


def bench_speed(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = os.path.join(tmp, "big.fits")
        make_big_fits(path, args.size_mib)
        size = os.path.getsize(path)
        report = fitsaudit.check_file(path)
        assert report.status == "ok" and report.checksums == "ok", report.to_json()
        medians = interleaved(
            {"fitsync": lambda: fitsaudit.check_file(path), "b3sum": lambda: run(["b3sum", path])}, [path], args.repeats
        )
    print(f"file: {size / 2**30:.2f} GiB FITS image with CHECKSUM/DATASUM, warm cache, {args.repeats} interleaved runs")
    for name, seconds in medians.items():
        print(f"  {name:8} {seconds:7.3f} s  {size / seconds / 1e9:6.2f} GB/s")
    print(f"  fitsync / b3sum time ratio: {medians['fitsync'] / medians['b3sum']:.2f}")


def bench_gzip(args) -> None:
    files = sorted(str(p) for p in RELEASE.rglob("*.fits.gz"))
    compressed = sum(os.path.getsize(p) for p in files)
    plain = sum(len(zlib.decompress(Path(p).read_bytes(), wbits=31)) for p in files)
    contenders = {
        "fitsync (1 job)": lambda: fitsaudit.audit_tree(str(RELEASE), jobs=1),
        "fitsync (2 jobs)": lambda: fitsaudit.audit_tree(str(RELEASE), jobs=2),
        "gzip -t": lambda: run(["gzip", "-t", *files]),
    }
    medians = interleaved(contenders, files, args.repeats)
    print(f"{len(files)} .fits.gz files, {compressed / 1e6:.1f} MB compressed, {plain / 1e6:.1f} MB FITS; {args.repeats} interleaved runs")
    for name, seconds in medians.items():
        print(f"  {name:17} {seconds:6.3f} s  {plain / seconds / 1e6:7.1f} MB/s of FITS bytes")
    print(f"  gzip -t / fitsync (1 job) time ratio: {medians['gzip -t'] / medians['fitsync (1 job)']:.2f}")


# -- single-byte changes over the whole release ----------------------------------


def gzip_regions(data: bytes) -> dict:
    """offset -> name of the part of the gzip file it is in."""
    header_length = fits_gzip.parse_gzip_header(data)[0]
    names = {0: "magic", 1: "magic", 2: "method", 3: "flags", 4: "mtime", 5: "mtime", 6: "mtime", 7: "mtime", 8: "xfl", 9: "os"}
    regions = {o: names.get(o, "name") for o in range(header_length)}
    regions.update({o: "trailer" for o in range(len(data) - 8, len(data))})
    return regions


def flips_of_file(job) -> list[tuple[str, str, str]]:
    """(region, outcome, where) for each change of one file; outcome is
    detected / harmless (FITS bytes identical) / MISSED."""
    path, deflate_flips, seed = job
    import numpy as np

    rng = np.random.default_rng(seed)
    data = Path(path).read_bytes()
    original = zlib.decompress(data, wbits=31)
    regions = gzip_regions(data)
    changes = [(o, 0xFF) for o in regions] + [(o, 1 << int(rng.integers(0, 8))) for o in regions]
    header_length = fits_gzip.parse_gzip_header(data)[0]
    changes += [(int(o), int(rng.integers(1, 256))) for o in rng.integers(header_length, len(data) - 8, deflate_flips)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, os.path.basename(path))
        for offset, mask in changes:
            damaged = bytearray(data)
            damaged[offset] ^= mask
            with open(target, "wb") as out:
                out.write(damaged)
            status = fitsaudit.check_file(target).status
            if status != "ok":
                outcome = "detected"
            else:
                try:
                    same = zlib.decompress(bytes(damaged), wbits=31) == original
                except zlib.error:
                    same = False
                outcome = "harmless" if same else "MISSED"
            results.append((regions.get(offset, "deflate"), outcome, f"{os.path.basename(path)}@{offset}^{mask:#04x}"))
    return results


def bench_flips(args) -> None:
    files = sorted(str(p) for p in RELEASE.rglob("*.fits.gz"))
    jobs = [(p, args.deflate_flips, i) for i, p in enumerate(files)]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = [r for rs in pool.map(flips_of_file, jobs) for r in rs]
    elapsed = time.perf_counter() - start
    table: dict = {}
    for region, outcome, _ in results:
        table.setdefault(region, {"detected": 0, "harmless": 0, "MISSED": 0})[outcome] += 1
    print(f"{len(results)} single-byte changes over {len(files)} files in {elapsed:.0f} s")
    print(f"{'region':10} {'detected':>9} {'harmless':>9} {'MISSED':>7}")
    for region in ("magic", "method", "flags", "mtime", "xfl", "os", "name", "deflate", "trailer"):
        row = table.get(region, {"detected": 0, "harmless": 0, "MISSED": 0})
        print(f"{region:10} {row['detected']:>9} {row['harmless']:>9} {row['MISSED']:>7}")
    missed = [where for _, outcome, where in results if outcome == "MISSED"]
    print("missed:", missed or "none")


# -- the detection table -------------------------------------------------------------


def bench_table(args) -> None:
    import re

    from test_fits_corpus import astropy_verdict, build_corpus

    rows: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for number, case in enumerate(build_corpus()):
            path = os.path.join(tmp, f"case{number}{case.suffix}")
            with open(path, "wb") as out:
                out.write(case.data)
            ours = fitsaudit.check_file(path).status
            theirs = astropy_verdict(path, timeout=20)
            kind = re.sub(r" at \d+", "", case.name)
            row = rows.setdefault(kind, {"n": 0, "ours": {}, "theirs": {}})
            row["n"] += 1
            row["ours"][ours] = row["ours"].get(ours, 0) + 1
            row["theirs"][theirs] = row["theirs"].get(theirs, 0) + 1

    def cell(counts: dict, n: int) -> str:
        return ", ".join(f"{k} {v}/{n}" if n > 1 else k for k, v in sorted(counts.items()))

    print("| kind | fitsync | astropy open(checksum=True) + verify |")
    print("| --- | --- | --- |")
    for kind, row in rows.items():
        print(f"| {kind} | {cell(row['ours'], row['n'])} | {cell(row['theirs'], row['n'])} |")


def main() -> None:
    args = docopt(__doc__)
    options = {
        "size_mib": int(args["--size-mib"]),
        "repeats": int(args["--repeats"]),
        "tmp": args["--tmp"],
        "deflate_flips": int(args["--deflate-flips"]),
        "jobs": int(args["--jobs"]),
    }
    what = next(name for name in ("speed", "gzip", "flips", "table") if args[name])
    {"speed": bench_speed, "gzip": bench_gzip, "flips": bench_flips, "table": bench_table}[what](Options(**options))


class Options:
    """The command line's options as attributes."""

    def __init__(self, **options):
        self.__dict__.update(options)


if __name__ == "__main__":
    main()
