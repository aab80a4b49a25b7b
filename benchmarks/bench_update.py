"""Local updates of a changed 1 GiB FITS file (issue 26), run by hand.

Usage:
  bench_update.py [--big-mib=N] [--rounds=N] [--cases=LIST] [--python=EXE]

Options:
  --big-mib=N    Size of the FITS file in MiB [default: 1024].
  --rounds=N     Interleaved rounds per comparison [default: 3].
  --cases=LIST   Comma-separated: default, inplace, xfs, blocks, kernel
                 [default: default,inplace,xfs,blocks].
  --python=EXE   Interpreter that runs fitsync (a venv's, as users install it).

Three edits of the same file, each mirrored locally into the old copy:
``header`` (one keyword's value), ``grown`` (the header grows by a 2880-byte
block, so the data shifts) and ``data`` (1 MiB of pixels overwritten).

* ``default``: ``fitsync mirror`` vs ``rsync -a -I --no-whole-file``, on
  this machine's file system (ext4 here);
* ``inplace``: ``fitsync mirror --inplace`` vs ``rsync -a -I --no-whole-file
  --inplace``, with the bytes each wrote to the disk (the child's
  ``ru_oublock``, the block-layer writes /proc/PID/io reports as write_bytes);
* ``xfs`` (root only): on an XFS file system with reflinks made on a loop
  device, fitsync (which clones) vs ``rsync -a -I --no-whole-file``, with the
  space each update added while a hard link (a snapshot, a backup) keeps the
  old version; and a new copy inside that file system (fitsync clones it) vs
  ``rsync -a``;
* ``kernel``: the delta a remote source gets (forced for a local one with
  ``--no-whole-file``), its old runs copied by ``copy_file_range`` through
  the page cache (``FITSYNC_DIRECT_IO=0``) vs through fitsync's buffers with
  direct I/O (the default for files of 64 MiB or more); the reason for that
  default on this VM;
* ``blocks``: ``fitsync manifest --blocks`` of the file, in GB/s, vs
  ``zsyncmake`` (block checksums for delta downloads, its nearest analogue).

Compared commands alternate in each round, each after its destination is
reset and every input re-read (these VMs drop idle pages after ~30 s); the
medians are printed, with ratios fitsync / reference (below 1: fitsync is
faster or writes less).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import installed_env, table, warm  # noqa: E402

WORK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work", "update")
FITSYNC = [sys.executable, "-m", "fitsync"]
ENV = installed_env()
EDITS = ("header", "grown", "data")
CASES = ("default", "inplace", "xfs", "blocks", "kernel")
RSYNC_DELTA = ["rsync", "-a", "-I", "--no-whole-file"]


def measured(cmd: list, env=None) -> tuple[float, int]:
    """(seconds, bytes the process wrote to block devices) of one run."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{cmd[0]} failed: {proc.stderr.read().decode(errors='replace')}")
    return seconds, usage.ru_oublock * 512


def versions(mib: int) -> dict:
    """{edit: directory holding that version's image.fits}, and "old"."""
    from bench_mirror import make_big_fits

    dirs = {name: os.path.join(WORK, "src", name) for name in ("old", *EDITS)}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    old = os.path.join(dirs["old"], "image.fits")
    make_big_fits(old, mib)
    for edit in EDITS:
        path = os.path.join(dirs[edit], "image.fits")
        if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(old):
            write_edit(old, path, edit)
    os.utime(old, (1_600_000_000, 1_600_000_000))
    return dirs


def write_edit(old: str, new: str, edit: str) -> None:
    with open(old, "rb") as f:
        header = f.read(2880)
        end = header.index(b"END     ")
        if edit == "header":
            i = header.index(b"OBJECT  = ")
            header = header[:i] + b"OBJECT  = 'EDITED'".ljust(80) + header[i + 80:]
        elif edit == "grown":
            cards = b"".join(f"HISTORY grown header card {n}".ljust(80).encode() for n in range(36))
            header = (header[:end] + cards + header[end:end + 80]).ljust(5760, b" ")
        with open(new, "wb") as out:
            out.write(header)
            shutil.copyfileobj(f, out, 16 << 20)
        if edit == "data":
            with open(new, "r+b") as out:
                out.seek(os.path.getsize(new) // 2)
                out.write(os.urandom(1 << 20))


def reset(old_dir: str, dst: str, *inputs: str, snapshot: bool):
    """Put the old copy in ``dst``; with ``snapshot`` a hard link beside dst
    keeps it, as a snapshot or a backup would, so that the space a run adds
    is what it did not share with the old copy (not offset by freeing it)."""
    def go():
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(dst)
        target = os.path.join(dst, "image.fits")
        shutil.copy2(os.path.join(old_dir, "image.fits"), target)
        link = dst + ".snapshot"
        if os.path.exists(link):
            os.unlink(link)
        if snapshot:
            os.link(target, link)
        warm(*inputs, dst)
    return go


def compare(cases: dict, rounds: int) -> dict:
    """{name: (median seconds, median bytes written, median space added)}: cases alternate."""
    runs: dict = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            case["setup"]()
            used = _used(case["dst"])
            seconds, written = measured(case["cmd"], case.get("env"))
            runs[name].append((seconds, written, _used(case["dst"]) - used))
    return {name: tuple(statistics.median(r[i] for r in values) for i in range(3)) for name, values in runs.items()}


def _used(path: str) -> int:
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def edit_cases(dirs: dict, base: str, edit: str, fitsync_flags: list, rsync_flags: list) -> dict:
    src = dirs[edit]
    snapshot = "--inplace" not in fitsync_flags  # in place writes into every link of the file
    dsts = {name: os.path.join(base, f"{edit}-{name}") for name in ("fitsync", "rsync")}
    return {
        "fitsync": {"setup": reset(dirs["old"], dsts["fitsync"], src, snapshot=snapshot), "dst": base, "env": ENV,
                    "cmd": FITSYNC + ["mirror", src, dsts["fitsync"], "--quiet", *fitsync_flags]},
        "rsync": {"setup": reset(dirs["old"], dsts["rsync"], src, snapshot=snapshot), "dst": base,
                  "cmd": RSYNC_DELTA + rsync_flags + [src + "/", dsts["rsync"] + "/"]},
    }


def run_edits(dirs: dict, base: str, label: str, rounds: int, rows: list, fitsync_flags=(), rsync_flags=(),
              env=None) -> None:
    for edit in EDITS:
        cases = edit_cases(dirs, base, edit, list(fitsync_flags), list(rsync_flags))
        if env:
            cases["fitsync"]["env"] = {**ENV, **env}
        res = compare(cases, rounds)
        (f_s, f_w, f_u), (r_s, r_w, r_u) = res["fitsync"], res["rsync"]
        rows.append((f"{label}: {edit}", f"{f_s:.3f}", f"{r_s:.3f}", f"{f_s / r_s:.2f}",
                     _mib(f_w), _mib(r_w), _mib(f_u), _mib(r_u), f"{os.getloadavg()[0]:.2f}"))
        for name in ("fitsync", "rsync"):
            got = os.path.join(base, f"{edit}-{name}", "image.fits")
            if subprocess.run(["cmp", "-s", got, os.path.join(dirs[edit], "image.fits")]).returncode:
                sys.exit(f"{name} built a wrong {edit} copy")
            shutil.rmtree(os.path.dirname(got))
            if os.path.exists(os.path.dirname(got) + ".snapshot"):
                os.unlink(os.path.dirname(got) + ".snapshot")


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.2f}"


class XfsLoop:
    """An XFS file system with reflinks on a loop device, for the run."""

    def __init__(self):
        self.image = os.path.join(WORK, "xfs.img")
        self.mount = os.path.join(WORK, "xfs")

    def __enter__(self) -> str:
        os.makedirs(self.mount, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(6 << 30)
        subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", self.image], check=True)
        subprocess.run(["mount", "-o", "loop", self.image, self.mount], check=True)
        return self.mount

    def __exit__(self, *exc):
        subprocess.run(["umount", self.mount], check=False)
        os.unlink(self.image)


def new_copy_within(mount: str, dirs: dict, rounds: int, rows: list) -> None:
    """A new copy inside the XFS file system (staging to archive): fitsync
    clones the source, rsync -a writes it."""
    staging = os.path.join(mount, "staging")
    os.makedirs(staging, exist_ok=True)
    shutil.copy2(os.path.join(dirs["old"], "image.fits"), os.path.join(staging, "image.fits"))
    dsts = {name: os.path.join(mount, f"new-{name}") for name in ("fitsync", "rsync")}

    def fresh(name):
        def go():
            shutil.rmtree(dsts[name], ignore_errors=True)
            warm(staging)
        return go

    res = compare({
        "fitsync": {"setup": fresh("fitsync"), "dst": mount, "env": ENV,
                    "cmd": FITSYNC + ["mirror", staging, dsts["fitsync"], "--quiet"]},
        "rsync": {"setup": fresh("rsync"), "dst": mount, "cmd": ["rsync", "-a", staging + "/", dsts["rsync"] + "/"]},
    }, rounds)
    (f_s, f_w, f_u), (r_s, r_w, r_u) = res["fitsync"], res["rsync"]
    rows.append(("xfs: new copy (vs rsync -a)", f"{f_s:.3f}", f"{r_s:.3f}", f"{f_s / r_s:.2f}",
                 _mib(f_w), _mib(r_w), _mib(f_u), _mib(r_u), f"{os.getloadavg()[0]:.2f}"))


def blocks_rate(dirs: dict, rounds: int, rows: list) -> None:
    """manifest --blocks of the old file vs zsyncmake, in GB/s."""
    src = dirs["old"]
    path = os.path.join(src, "image.fits")
    size = os.path.getsize(path)
    out = os.path.join(WORK, "blocks")
    os.makedirs(out, exist_ok=True)
    times: dict = {"fitsync": [], "zsyncmake": [], "b3sum": []}
    for _ in range(rounds):
        for name, cmd in (("fitsync", FITSYNC + ["manifest", src, "--blocks", "--quiet",
                                                 f"--output={out}/m.jsonl"]),
                          ("zsyncmake", ["zsyncmake", "-o", f"{out}/z.zsync", path]),
                          ("b3sum", ["b3sum", path])):
            warm(path)
            times[name].append(measured(cmd, ENV)[0])
    med = {name: statistics.median(v) for name, v in times.items()}
    for name in ("zsyncmake", "b3sum"):
        rows.append((f"manifest --blocks vs {name}", f"{med['fitsync']:.3f}", f"{med[name]:.3f}",
                     f"{med['fitsync'] / med[name]:.2f}", f"{size / med['fitsync'] / 1e9:.2f} GB/s",
                     f"{size / med[name] / 1e9:.2f} GB/s", "", "", f"{os.getloadavg()[0]:.2f}"))


def main() -> None:
    from docopt import docopt

    opts = docopt(__doc__)
    if opts["--python"]:
        FITSYNC[0] = opts["--python"]
    cases = opts["--cases"].split(",")
    unknown = set(cases) - set(CASES)
    if unknown:
        sys.exit(f"unknown cases {sorted(unknown)}; choose from {', '.join(CASES)}")
    rounds = int(opts["--rounds"])
    dirs = versions(int(opts["--big-mib"]))
    rows: list = []
    local = os.path.join(WORK, "dst")
    os.makedirs(local, exist_ok=True)
    if "default" in cases:
        run_edits(dirs, local, "default", rounds, rows)
    if "inplace" in cases:
        run_edits(dirs, local, "--inplace", rounds, rows, ["--inplace"], ["--inplace"])
    if "xfs" in cases:
        if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
            sys.exit("the xfs case makes a file system on a loop device: run as root with xfsprogs")
        with XfsLoop() as mount:
            run_edits(dirs, mount, "xfs", rounds, rows)
            new_copy_within(mount, dirs, rounds, rows)
    if "kernel" in cases:
        run_edits(dirs, local, "delta, direct I/O", rounds, rows, ["--no-whole-file"])
        run_edits(dirs, local, "delta, copy_file_range", rounds, rows, ["--no-whole-file"],
                  env={"FITSYNC_DIRECT_IO": "0"})
    if "blocks" in cases:
        blocks_rate(dirs, rounds, rows)
    print(f"fitsync run by {FITSYNC[0]}; {int(opts['--big-mib'])} MiB FITS file; medians of {rounds}")
    print(table(rows, ("case", "fitsync s", "ref s", "ratio", "fitsync MiB written", "ref MiB written",
                       "fitsync MiB added", "ref MiB added", "load")))


if __name__ == "__main__":
    main()
