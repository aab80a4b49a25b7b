"""Local mirror benchmarks against rsync and b3sum (issue 3), run by hand.

Usage:
  bench_mirror.py [--files=N] [--big-mib=N] [--rounds=N]

Options:
  --files=N    Small files in the tree [default: 20000].
  --big-mib=N  Size of the big FITS file in MiB [default: 1024].
  --rounds=N   Interleaved rounds per comparison [default: 3].

1. No-op re-run over a tree of small files: fitsync vs ``rsync -a``; with
   content checks: ``fitsync --checksum`` vs ``rsync -ac``.
2. A 1 GiB FITS file whose header keyword changed: fitsync vs ``rsync -a``
   (whole-file for local copies, its default) and ``rsync -a --no-whole-file``.
3. ``fitsync manifest`` over the small-file tree and the big file vs ``b3sum``.

Every compared pair runs interleaved with caches re-warmed; medians printed
as ratios (fitsync / reference; below 1 means fitsync is faster).
"""

from __future__ import annotations


import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import interleave, table, warm  # noqa: E402

WORK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work", "mirror")
FITSYNC = [sys.executable, "-m", "fitsync"]


def make_small_tree(root: str, count: int) -> None:
    if os.path.isdir(root) and sum(len(f) for _, _, f in os.walk(root)) == count:
        return
    shutil.rmtree(root, ignore_errors=True)
    for i in range(count):
        d = os.path.join(root, f"dir{i // 200:03d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"file{i:05d}.dat"), "wb") as f:
            f.write(os.urandom(2880 * (1 + i % 3)))


def make_big_fits(path: str, mib: int) -> None:
    if os.path.exists(path) and os.path.getsize(path) >= mib << 20:
        return
    import numpy as np
    from astropy.io import fits

    side = int(((mib << 20) // 4) ** 0.5)
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = -32
    header["NAXIS"] = 2
    header["NAXIS1"] = side
    header["NAXIS2"] = side
    header["OBJECT"] = "BENCH"
    with open(path, "wb") as f:
        f.write(header.tostring().encode())
        rng = np.random.default_rng(1)
        remaining = side * side * 4
        while remaining:
            n = min(remaining, 64 << 20)
            f.write(rng.bytes(n))
            remaining -= n
        pad = -(side * side * 4) % 2880
        f.write(b"\0" * pad)


def edit_header(path: str) -> None:
    with open(path, "r+b") as f:
        head = f.read(2880)
        i = head.index(b"OBJECT  = ")
        f.seek(i)
        card = b"OBJECT  = 'EDITED'".ljust(80)
        f.write(card)


def main() -> None:
    from types import SimpleNamespace

    from docopt import docopt

    opts = docopt(__doc__)
    args = SimpleNamespace(files=int(opts["--files"]), big_mib=int(opts["--big-mib"]), rounds=int(opts["--rounds"]))
    os.makedirs(WORK, exist_ok=True)
    small = os.path.join(WORK, "small-dat")
    make_small_tree(small, args.files)
    rows = []

    # 1. no-op re-runs
    copies = {name: os.path.join(WORK, name) for name in ("dst-fitsync", "dst-rsync")}
    subprocess.run(["rsync", "-a", small + "/", copies["dst-rsync"] + "/"], check=True)
    subprocess.run(FITSYNC + ["mirror", small, copies["dst-fitsync"], "--quiet"], check=True)
    warm_small = lambda: warm(small, *copies.values())  # noqa: E731
    res = interleave({
        "fitsync": {"setup": warm_small, "cmd": FITSYNC + ["mirror", small, copies["dst-fitsync"], "--quiet"]},
        "rsync": {"setup": warm_small, "cmd": ["rsync", "-a", small + "/", copies["dst-rsync"] + "/"]},
    }, args.rounds)
    rows.append((f"no-op re-run, {args.files} files", f"{res['fitsync']:.3f}", "rsync -a", f"{res['rsync']:.3f}",
                 f"{res['fitsync'] / res['rsync']:.2f}"))
    res = interleave({
        "fitsync": {"setup": warm_small,
                    "cmd": FITSYNC + ["mirror", small, copies["dst-fitsync"], "--quiet", "--checksum"]},
        "rsync": {"setup": warm_small, "cmd": ["rsync", "-ac", small + "/", copies["dst-rsync"] + "/"]},
    }, args.rounds)
    rows.append((f"no-op --checksum, {args.files} files", f"{res['fitsync']:.3f}", "rsync -ac",
                 f"{res['rsync']:.3f}", f"{res['fitsync'] / res['rsync']:.2f}"))

    # 2. changed 1 GiB FITS file
    big_dir = os.path.join(WORK, "big")
    os.makedirs(big_dir, exist_ok=True)
    original = os.path.join(big_dir, "image.fits")
    make_big_fits(original, args.big_mib)
    edited_src = os.path.join(WORK, "big-src")
    os.makedirs(edited_src, exist_ok=True)
    edited = os.path.join(edited_src, "image.fits")
    shutil.copyfile(original, edited)
    edit_header(edited)
    dsts = {name: os.path.join(WORK, f"big-{name}") for name in ("fitsync", "rsync", "rsync-delta")}

    def reset(name):
        def go():
            os.makedirs(dsts[name], exist_ok=True)
            target = os.path.join(dsts[name], "image.fits")
            shutil.copyfile(original, target)
            os.utime(target, (1_600_000_000, 1_600_000_000))
            warm(edited, target)
        return go

    res = interleave({
        "fitsync": {"setup": reset("fitsync"), "cmd": FITSYNC + ["mirror", edited_src, dsts["fitsync"], "--quiet"]},
        "rsync": {"setup": reset("rsync"), "cmd": ["rsync", "-a", edited_src + "/", dsts["rsync"] + "/"]},
        "rsync-delta": {"setup": reset("rsync-delta"),
                        "cmd": ["rsync", "-a", "--no-whole-file", edited_src + "/", dsts["rsync-delta"] + "/"]},
    }, args.rounds)
    rows.append((f"{args.big_mib} MiB FITS header edit", f"{res['fitsync']:.3f}", "rsync -a", f"{res['rsync']:.3f}",
                 f"{res['fitsync'] / res['rsync']:.2f}"))
    rows.append((f"{args.big_mib} MiB FITS header edit", f"{res['fitsync']:.3f}", "rsync -a --no-whole-file",
                 f"{res['rsync-delta']:.3f}", f"{res['fitsync'] / res['rsync-delta']:.2f}"))
    for name in dsts:
        with open(os.path.join(dsts[name], "image.fits"), "rb") as a, open(edited, "rb") as b:
            assert a.read(1 << 20) == b.read(1 << 20), f"{name} produced a wrong copy"

    # 3. manifest vs b3sum
    def b3sum_tree(root):
        names = []
        for dirpath, _, files in os.walk(root):
            names += [os.path.join(dirpath, n) for n in files]
        return lambda: subprocess.run(["b3sum", *names], check=True, stdout=subprocess.DEVNULL)

    res = interleave({
        "fitsync": {"setup": lambda: warm(small), "cmd": FITSYNC + ["manifest", small, "--output=/dev/null"]},
        "b3sum": {"setup": lambda: warm(small), "cmd": b3sum_tree(small)},
    }, args.rounds)
    rows.append((f"manifest, {args.files} files", f"{res['fitsync']:.3f}", "b3sum", f"{res['b3sum']:.3f}",
                 f"{res['fitsync'] / res['b3sum']:.2f}"))
    res = interleave({
        "fitsync": {"setup": lambda: warm(big_dir), "cmd": FITSYNC + ["manifest", big_dir, "--output=/dev/null"]},
        "b3sum": {"setup": lambda: warm(big_dir), "cmd": ["b3sum", original]},
    }, args.rounds)
    rows.append((f"manifest, {args.big_mib} MiB file", f"{res['fitsync']:.3f}", "b3sum", f"{res['b3sum']:.3f}",
                 f"{res['fitsync'] / res['b3sum']:.2f}"))
    print(table(rows, ("case", "fitsync s", "reference", "ref s", "ratio")))


if __name__ == "__main__":
    main()
