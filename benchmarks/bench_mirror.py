"""Local mirror benchmarks against rsync and b3sum (issue 3), run by hand.

Usage:
  bench_mirror.py [--files=N] [--big-mib=N] [--rounds=N] [--cases=LIST] [--python=EXE]

Options:
  --files=N      Small files in the tree [default: 20000].
  --big-mib=N    Size of the big FITS file in MiB [default: 1024].
  --rounds=N     Interleaved rounds per comparison [default: 3].
  --cases=LIST   Comma-separated: noop, checksum, big, new-big, manifest,
                 manifest-big, new-small, fsync, sparse
                 [default: noop,checksum,big,new-big,manifest,manifest-big].
  --python=EXE   Interpreter that runs fitsync (else the one running this).
                 Users run fitsync from a virtualenv (pip install); a sandbox
                 whose base interpreter imports extra modules at start-up
                 (a .pth file) should pass a venv's python here, e.g.
                 python3 -m venv /tmp/bvenv && /tmp/bvenv/bin/pip install -e .

1. No-op re-run over a tree of small files: fitsync vs ``rsync -a``; with
   content checks: ``fitsync --checksum`` vs ``rsync -ac``.
2. A 1 GiB FITS file whose header keyword changed: fitsync vs ``rsync -a``
   (whole-file for local copies, its default) and ``rsync -a --no-whole-file``.
3. The big file copied whole into an empty destination: fitsync vs ``rsync -a``.
4. ``fitsync manifest`` over the small-file tree and the big file vs ``b3sum``.
5. ``new-small``: the first copy of 2,000 of the small files, fitsync vs
   ``rsync -a``; ``fsync``: the same with ``--fsync`` vs ``rsync -a --fsync``.
6. ``sparse``: a new copy of a 1 GiB file holding 1 MiB of data, fitsync vs
   ``rsync -a --sparse``; the space each copy takes is printed too.

Updates of a changed 1 GiB FITS file by how they are built (the default,
``--inplace`` and reflinks on XFS, with bytes written and space added) are
in ``bench_update.py`` beside this file.

Every compared pair runs interleaved with caches re-warmed; medians printed
as ratios (fitsync / reference; below 1 means fitsync is faster), each with
the 1-minute load average when it was taken (figures taken at a load above
1 on a 2-core machine are not comparable). fitsync runs with bytecode
caching on, as an installed package does.
"""

from __future__ import annotations


import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import installed_env, interleave, table, warm  # noqa: E402

WORK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work", "mirror")
FITSYNC = [sys.executable, "-m", "fitsync"]
CASES = ("noop", "checksum", "big", "new-big", "manifest", "manifest-big", "new-small", "fsync", "sparse")
ENV = installed_env()


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
    args = SimpleNamespace(files=int(opts["--files"]), big_mib=int(opts["--big-mib"]), rounds=int(opts["--rounds"]),
                           cases=opts["--cases"].split(","))
    unknown = set(args.cases) - set(CASES)
    if unknown:
        sys.exit(f"unknown cases {sorted(unknown)}; choose from {', '.join(CASES)}")
    if opts["--python"]:
        FITSYNC[0] = opts["--python"]
    os.makedirs(WORK, exist_ok=True)
    small = os.path.join(WORK, "small-dat")
    make_small_tree(small, args.files)
    rows = []

    def row(case, fitsync_s, reference, reference_s):
        rows.append((case, f"{fitsync_s:.3f}", reference, f"{reference_s:.3f}", f"{fitsync_s / reference_s:.2f}",
                     f"{os.getloadavg()[0]:.2f}"))

    # 1. no-op re-runs; each side warms only the trees it reads
    copies = {name: os.path.join(WORK, name) for name in ("dst-fitsync", "dst-rsync")}
    if {"noop", "checksum"} & set(args.cases):
        subprocess.run(["rsync", "-a", small + "/", copies["dst-rsync"] + "/"], check=True)
        subprocess.run(FITSYNC + ["mirror", small, copies["dst-fitsync"], "--quiet"], check=True, env=ENV)
    warm_fitsync = lambda: warm(small, copies["dst-fitsync"])  # noqa: E731
    warm_rsync = lambda: warm(small, copies["dst-rsync"])  # noqa: E731
    if "noop" in args.cases:
        res = interleave({
            "fitsync": {"setup": warm_fitsync, "env": ENV,
                        "cmd": FITSYNC + ["mirror", small, copies["dst-fitsync"], "--quiet"]},
            "rsync": {"setup": warm_rsync, "cmd": ["rsync", "-a", small + "/", copies["dst-rsync"] + "/"]},
        }, args.rounds)
        row(f"no-op re-run, {args.files} files", res["fitsync"], "rsync -a", res["rsync"])
    if "checksum" in args.cases:
        res = interleave({
            "fitsync": {"setup": warm_fitsync, "env": ENV,
                        "cmd": FITSYNC + ["mirror", small, copies["dst-fitsync"], "--quiet", "--checksum"]},
            "rsync": {"setup": warm_rsync, "cmd": ["rsync", "-ac", small + "/", copies["dst-rsync"] + "/"]},
        }, args.rounds)
        row(f"no-op --checksum, {args.files} files", res["fitsync"], "rsync -ac", res["rsync"])
    if "big" in args.cases:
        big_header_edit(args, row)
    if "new-big" in args.cases:
        new_big_copy(args, row)
    if "manifest" in args.cases:
        res = interleave({
            "fitsync": {"setup": lambda: warm(small), "env": ENV,
                        "cmd": FITSYNC + ["manifest", small, "--output=/dev/null"]},
            "b3sum": {"setup": lambda: warm(small), "cmd": b3sum_tree(small)},
        }, args.rounds)
        row(f"manifest, {args.files} files", res["fitsync"], "b3sum", res["b3sum"])
    if "manifest-big" in args.cases:
        big_dir, original = big_fits(args)
        res = interleave({
            "fitsync": {"setup": lambda: warm(big_dir), "env": ENV,
                        "cmd": FITSYNC + ["manifest", big_dir, "--output=/dev/null"]},
            "b3sum": {"setup": lambda: warm(big_dir), "cmd": ["b3sum", original]},
        }, args.rounds)
        row(f"manifest, {args.big_mib} MiB file", res["fitsync"], "b3sum", res["b3sum"])
    if "new-small" in args.cases:
        small_copy(small, row, args.rounds, fsync=False)
    if "fsync" in args.cases:
        small_copy(small, row, args.rounds, fsync=True)
    if "sparse" in args.cases:
        sparse_copy(row, args.rounds)
    print(f"fitsync run by {FITSYNC[0]}")
    print(table(rows, ("case", "fitsync s", "reference", "ref s", "ratio", "load")))


def b3sum_tree(root):
    names = []
    for dirpath, _, files in os.walk(root):
        names += [os.path.join(dirpath, n) for n in files]
    return lambda: subprocess.run(["b3sum", *names], check=True, stdout=subprocess.DEVNULL)


def big_fits(args) -> tuple[str, str]:
    """(its directory, its path): the big FITS file every big case starts from."""
    big_dir = os.path.join(WORK, "big")
    os.makedirs(big_dir, exist_ok=True)
    original = os.path.join(big_dir, "image.fits")
    make_big_fits(original, args.big_mib)
    return big_dir, original


def new_big_copy(args, row) -> None:
    """The big FITS file into an empty destination: fitsync vs rsync -a."""
    big_dir, _ = big_fits(args)
    dsts = {name: os.path.join(WORK, f"new-{name}") for name in ("fitsync", "rsync")}

    def reset(name):
        def go():
            shutil.rmtree(dsts[name], ignore_errors=True)
            warm(big_dir)
        return go

    res = interleave({
        "fitsync": {"setup": reset("fitsync"), "env": ENV,
                    "cmd": FITSYNC + ["mirror", big_dir, dsts["fitsync"], "--quiet"]},
        "rsync": {"setup": reset("rsync"), "cmd": ["rsync", "-a", big_dir + "/", dsts["rsync"] + "/"]},
    }, args.rounds)
    row(f"{args.big_mib} MiB FITS file, new", res["fitsync"], "rsync -a", res["rsync"])
    for path in dsts.values():
        shutil.rmtree(path, ignore_errors=True)


def small_copy(small: str, row, rounds: int, fsync: bool) -> None:
    """A first copy of 2,000 small files (each synced to disk with ``fsync``):
    fitsync vs rsync -a (--fsync for both)."""
    part = os.path.join(WORK, "small-part")
    if not os.path.isdir(part):
        os.makedirs(part)
        for name in sorted(os.listdir(small))[:10]:  # 10 directories of 200 files
            shutil.copytree(os.path.join(small, name), os.path.join(part, name))
    dsts = {name: os.path.join(WORK, f"copy-{name}") for name in ("fitsync", "rsync")}
    flag = ["--fsync"] if fsync else []

    def reset(name):
        def go():
            shutil.rmtree(dsts[name], ignore_errors=True)
            os.sync()
            warm(part)
        return go

    res = interleave({
        "fitsync": {"setup": reset("fitsync"), "env": ENV,
                    "cmd": FITSYNC + ["mirror", part, dsts["fitsync"], "--quiet", *flag]},
        "rsync": {"setup": reset("rsync"), "cmd": ["rsync", "-a", *flag, part + "/", dsts["rsync"] + "/"]},
    }, rounds)
    what = "--fsync" if fsync else ""
    row(f"2000 files, new {what}".strip(), res["fitsync"], f"rsync -a {what}".strip(), res["rsync"])
    for path in dsts.values():
        shutil.rmtree(path, ignore_errors=True)


def sparse_copy(row, rounds: int) -> None:
    """A 1 GiB file with 1 MiB of data in the middle, copied new: fitsync vs rsync -a --sparse."""
    src = os.path.join(WORK, "sparse-src")
    os.makedirs(src, exist_ok=True)
    path = os.path.join(src, "holes.dat")
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.truncate(1 << 30)
            f.seek(500 << 20)
            f.write(os.urandom(1 << 20))
    dsts = {name: os.path.join(WORK, f"sparse-{name}") for name in ("fitsync", "rsync")}

    def reset(name):
        def go():
            shutil.rmtree(dsts[name], ignore_errors=True)
            os.sync()
        return go

    res = interleave({
        "fitsync": {"setup": reset("fitsync"), "env": ENV, "cmd": FITSYNC + ["mirror", src, dsts["fitsync"], "--quiet"]},
        "rsync": {"setup": reset("rsync"), "cmd": ["rsync", "-a", "--sparse", src + "/", dsts["rsync"] + "/"]},
    }, rounds)
    used = {name: os.stat(os.path.join(d, "holes.dat")).st_blocks * 512 >> 10 for name, d in dsts.items()}
    row(f"1 GiB sparse file, new (KiB on disk: {used['fitsync']} vs {used['rsync']})", res["fitsync"],
        "rsync -a --sparse", res["rsync"])
    for d in dsts.values():
        shutil.rmtree(d, ignore_errors=True)


def big_header_edit(args, row) -> None:
    """A 1 GiB FITS file whose header keyword changed: fitsync vs rsync."""
    big_dir, original = big_fits(args)
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
        "fitsync": {"setup": reset("fitsync"), "env": ENV,
                    "cmd": FITSYNC + ["mirror", edited_src, dsts["fitsync"], "--quiet"]},
        "rsync": {"setup": reset("rsync"), "cmd": ["rsync", "-a", edited_src + "/", dsts["rsync"] + "/"]},
        "rsync-delta": {"setup": reset("rsync-delta"),
                        "cmd": ["rsync", "-a", "--no-whole-file", edited_src + "/", dsts["rsync-delta"] + "/"]},
    }, args.rounds)
    row(f"{args.big_mib} MiB FITS header edit", res["fitsync"], "rsync -a", res["rsync"])
    row(f"{args.big_mib} MiB FITS header edit", res["fitsync"], "rsync -a --no-whole-file", res["rsync-delta"])
    for name in dsts:
        with open(os.path.join(dsts[name], "image.fits"), "rb") as a, open(edited, "rb") as b:
            assert a.read(1 << 20) == b.read(1 << 20), f"{name} produced a wrong copy"


if __name__ == "__main__":
    main()
