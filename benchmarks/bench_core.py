#!/usr/bin/env python3
"""Benchmark of fitsync's compiled core against b3sum, xxhsum, zsyncmake and rsync.

Usage:
    bench_core.py [--size-mib=<n>] [--repeat=<n>] [--only=<sections>]

Options:
    --size-mib=<n>       Size of the FITS image in MiB [default: 1024].
    --repeat=<n>         Timed runs of each contender [default: 5].
    --only=<sections>    Comma-separated: digest,signature,blocks,delta [default: digest,signature,blocks,delta].

Run by hand (not in the test suite): python3 benchmarks/bench_core.py

It writes a FITS image of about --size-mib MiB to benchmarks/work/ (kept for
the next run; the directory is git-ignored) and three edited copies:
a header keyword value changed; a keyword added so the header grows by one
2880-byte record; 1 MiB overwritten in the middle of the data. Each
comparison runs fitsync and the other tool alternately (A B A B ...), reading
the inputs right before every timed run so the page cache is warm, and
reports medians.

Compared:
  digest     fitsync.signature.file_digest      vs  b3sum
  signature  fitsync.signature.signature_of_file vs  xxhsum -H128, zsyncmake
  blocks     signature_of_file by block size (wall and CPU seconds)
  delta      signature_of_file(old, digest=False) + delta_recipe_for_file(new)
             (BLAKE3 of new) + apply_recipe (BLAKE3 of the output checked)
             into a temporary file renamed over the destination
             vs  rsync --no-whole-file -I onto a hard link of the old file;
             literal bytes vs rsync's "Literal data".
fitsync runs in this process; the tools run as subprocesses.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import numpy as np  # noqa: E402
from docopt import docopt  # noqa: E402

from fitsync.delta import delta_recipe_for_file, fetch_recipe_for_file  # noqa: E402
from fitsync.patch import apply_recipe  # noqa: E402
from fitsync.signature import file_digest, signature_of_file  # noqa: E402

RECORD = 2880
CARD = 80
WORK = HERE / "work" / "core"
GIB = 1 << 30


def card(text: str) -> bytes:
    return text.ljust(CARD).encode("ascii")


def header(cards: list[str]) -> bytes:
    raw = b"".join(card(c) for c in cards) + card("END")
    return raw + b" " * (-len(raw) % RECORD)


def base_cards(side: int) -> list[str]:
    cards = [
        "SIMPLE  =                    T / conforms to FITS standard",
        "BITPIX  =                  -32 / IEEE single precision",
        "NAXIS   =                    2",
        f"NAXIS1  = {side:20d}",
        f"NAXIS2  = {side:20d}",
        "OBJECT  = 'Crab    '           / target",
    ]
    # fill the first record up to one card short of END, so one more keyword
    # pushes END into a second record
    cards += [f"HISTORY filler card {i}" for i in range(35 - len(cards))]
    return cards


def make_image(size_mib: int) -> tuple[Path, int, int]:
    """The original image: (path, data offset, data size)."""
    side = int(np.sqrt(size_mib * (1 << 20) / 4))
    cards = base_cards(side)
    head = header(cards)
    assert len(head) == RECORD
    data_size = side * side * 4
    path = WORK / f"image-{size_mib}MiB.fits"
    expected = len(head) + data_size + (-data_size % RECORD)
    if path.exists() and path.stat().st_size == expected:
        return path, len(head), data_size
    WORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2880)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(head)
        rows = max(1, (16 << 20) // (side * 4))
        for row in range(0, side, rows):
            n = min(rows, side - row)
            block = rng.standard_normal((n, side), dtype=np.float32) * np.float32(20) + np.float32(1000)
            f.write(block.astype(">f4").tobytes())
        f.write(b"\0" * (-data_size % RECORD))
    os.replace(tmp, path)
    return path, len(head), data_size


def make_edits(original: Path, data_offset: int, data_size: int) -> dict[str, Path]:
    edits = {}
    with open(original, "rb") as f:
        head = f.read(data_offset)
    cards = [head[i : i + CARD].decode().rstrip() for i in range(0, len(head), CARD)]
    cards = cards[: cards.index("END")]

    def variant(name: str, new_head: bytes, patch=None) -> Path:
        path = WORK / f"{original.stem}-{name}.fits"
        if path.exists() and path.stat().st_size == original.stat().st_size - data_offset + len(new_head):
            return path
        tmp = path.with_suffix(".tmp")
        with open(original, "rb") as src, open(tmp, "wb") as dst:
            dst.write(new_head)
            src.seek(data_offset)
            shutil.copyfileobj(src, dst, 16 << 20)
            if patch:
                patch(dst)
        os.replace(tmp, path)
        return path

    value = [c.replace("'Crab    '", "'Vela    '") for c in cards]
    edits["keyword value changed"] = variant("value", header(value))
    grown = cards + ["OBSERVER= 'fitsync bench'"]
    edits["header grew 2880 bytes"] = variant("grown", header(grown))
    assert edits["header grew 2880 bytes"].stat().st_size == original.stat().st_size + RECORD

    def overwrite(dst):
        middle = data_offset + data_size // 2
        dst.seek(middle)
        dst.write(np.random.default_rng(1).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())

    edits["1 MiB overwritten"] = variant("overwritten", head, overwrite)
    return edits


def warm(*paths: Path) -> None:
    """Read files completely so the timed run finds them in the page cache."""
    buf = bytearray(16 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return done.stdout


def interleave(repeat: int, inputs: list[Path], contenders: dict) -> dict[str, list]:
    """Run every contender once per round, alternating, inputs re-read before each run."""
    results: dict[str, list] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, fn in contenders.items():
            warm(*inputs)
            results[name].append(timed(fn))
    return results


def median(samples) -> float:
    return statistics.median(t for t, _ in samples)


def our_delta(old: Path, new: Path, dest: Path):
    # The basis side needs block sums only, like rsync's generator: no
    # whole-file digest of the old file. The recipe carries the new file's
    # BLAKE3 and the patched file is checked against it.
    sig = signature_of_file(old, digest=False)
    recipe = delta_recipe_for_file(sig, new)
    tmp = dest.with_name(dest.name + ".fitsync-tmp")
    basis = os.open(old, os.O_RDONLY)
    source = os.open(new, os.O_RDONLY)
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        apply_recipe(recipe, basis, lambda ranges: (os.pread(source, n, o) for o, n in ranges), out)
    finally:
        os.close(basis)
        os.close(source)
        os.close(out)
    os.replace(tmp, dest)
    return recipe


def rsync_delta(new: Path, dest: Path) -> int:
    out = run(["rsync", "--no-whole-file", "-I", "--stats", str(new), str(dest)])
    match = re.search(r"Literal data: ([\d,]+) bytes", out)
    return int(match.group(1).replace(",", ""))


def reset_destination(old: Path, dest: Path) -> None:
    """The destination holds the old version again: a hard link, so rsync's
    temporary-file-and-rename leaves the original untouched."""
    if dest.exists():
        dest.unlink()
    os.link(old, dest)


def bench_digest(original: Path, repeat: int, rows: list) -> None:
    res = interleave(repeat, [original], {
        "fitsync": lambda: file_digest(original),
        "b3sum": lambda: run(["b3sum", "--no-names", str(original)]).strip(),
    })
    assert res["fitsync"][0][1] == res["b3sum"][0][1], "digests differ"
    rows.append(("digest", "b3sum", median(res["fitsync"]), median(res["b3sum"]), ">= 0.95"))


def bench_signature(original: Path, repeat: int, rows: list) -> None:
    zsync_out = WORK / "image.zsync"
    res = interleave(repeat, [original], {
        "fitsync": lambda: signature_of_file(original),
        "xxhsum": lambda: run(["xxhsum", "-H128", str(original)]),
        "zsyncmake": lambda: run(["zsyncmake", "-u", "x", "-o", str(zsync_out), str(original)]),
    })
    zsync_out.unlink(missing_ok=True)
    ours = median(res["fitsync"])
    sig = res["fitsync"][0][1]
    rows.append(("signature", "xxhsum -H128", ours, median(res["xxhsum"]), "report"))
    rows.append(("signature", "zsyncmake", ours, median(res["zsyncmake"]), "report"))
    size = original.stat().st_size
    print(f"signature: {size / ours / 1e9:.2f} GB/s (target >= 3), {len(sig)} blocks of {sig.block_size} bytes, "
          f"{len(sig.to_bytes()):,} bytes serialised")


def bench_block_sizes(original: Path, repeat: int) -> None:
    """Signature time and CPU time by block size: the bounds of default_block_size."""
    size = original.stat().st_size
    print(f"\n{'block size':>12} {'records':>8} {'blocks':>9} {'wall s':>8} {'cpu s':>8} {'GB/s':>6} {'sig bytes':>11}")
    for records in (1, 2, 4, 6, 8, 16, 32, 64, 128):
        samples = []
        for _ in range(repeat):
            warm(original)
            before = cpu_seconds()
            wall, sig = timed(lambda: signature_of_file(original, records * RECORD))
            samples.append((wall, cpu_seconds() - before))
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        print(f"{records * RECORD:12,} {records:8} {len(sig):9,} {wall:8.3f} {cpu:8.3f} {size / wall / 1e9:6.2f} "
              f"{len(sig.to_bytes()):11,}")


def bench_deltas(original: Path, edits: dict, repeat: int, rows: list) -> None:
    dest_dir = WORK / "dest"
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / original.name
    literal = []
    for name, new in edits.items():
        res = {"fitsync": [], "rsync": []}
        for _ in range(repeat):
            for who in ("fitsync", "rsync"):
                reset_destination(original, dest)
                os.sync()  # start each run without another run's dirty pages to write back
                warm(original, new)
                if who == "fitsync":
                    res[who].append(timed(lambda: our_delta(original, new, dest)))
                else:
                    res[who].append(timed(lambda: rsync_delta(new, dest)))
        recipe = res["fitsync"][0][1]
        ours_literal, rsync_literal = recipe.source_bytes, res["rsync"][0][1]
        reset_destination(original, dest)
        our_delta(original, new, dest)
        assert file_digest(dest) == file_digest(new), "patched file differs from the new file"
        zsync_literal = fetch_recipe_for_file(signature_of_file(new), original).source_bytes
        literal.append((name, ours_literal, zsync_literal, rsync_literal))
        rows.append((f"delta: {name}", "rsync", median(res["fitsync"]), median(res["rsync"]), "<= 0.5 time"))
    shutil.rmtree(dest_dir)
    print(f"\n{'edit':28} {'fitsync literal':>16} {'zsync-dir fetch':>16} {'rsync literal':>14}  ok")
    for name, ours_literal, zsync_literal, rsync_literal in literal:
        ok = "yes" if ours_literal <= rsync_literal else "NO"
        print(f"{name:28} {ours_literal:16,} {zsync_literal:16,} {rsync_literal:14,}  {ok}")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    options = docopt(__doc__)
    size_mib, repeat = int(options["--size-mib"]), int(options["--repeat"])
    sections = set(options["--only"].split(","))
    for tool in ("b3sum", "xxhsum", "zsyncmake", "rsync"):
        if not shutil.which(tool):
            sys.exit(f"bench_core: {tool} is not installed")

    original, data_offset, data_size = make_image(size_mib)
    edits = make_edits(original, data_offset, data_size)
    size = original.stat().st_size
    print(f"file: {original} ({size / GIB:.3f} GiB), repeat {repeat}, cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.2f}")
    rows: list = []
    if "digest" in sections:
        bench_digest(original, repeat, rows)
    if "signature" in sections:
        bench_signature(original, repeat, rows)
    if "blocks" in sections:
        bench_block_sizes(original, repeat)
    if "delta" in sections:
        bench_deltas(original, edits, repeat, rows)
    print(f"\n{'measure':34} {'vs':14} {'fitsync s':>10} {'other s':>10} {'other/fitsync':>14}  target")
    for measure, other, ours, theirs, target in rows:
        print(f"{measure:34} {other:14} {ours:10.3f} {theirs:10.3f} {theirs / ours:14.2f}  {target}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
