"""Bit rot: flip N random bits in random destination files (size and mtime kept),
then check that `fitsync audit` finds every damaged file and that
`mirror --checksum` (or `--manifest`) repairs all of them moving at most the
signature blocks that hold a flipped bit.

Usage:
  bitrot_trials.py [--flips=N] [--rounds=N] [--seed=N] [--workdir=DIR] [--json=FILE]
  bitrot_trials.py --help

Options:
  --flips=N     Bit flips per round [default: 1000].
  --rounds=N    Rounds (alternating --checksum and --manifest repairs) [default: 2].
  --seed=N      Seed of the tree and the flips [default: 0].
  --workdir=DIR Where the trees go (a fresh temporary directory by default).
  --json=FILE   Also write the figures as JSON.

Run from the repository: PYTHONPATH=src python3 stress/bitrot_trials.py --flips=1000
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

from docopt import docopt

from harness import MIB, copy_tree, fits_bytes, flip_random_bits, make_manifest, run_fitsync, snapshot, write_file


def build_tree(root: Path, rng: random.Random) -> None:
    for i in range(20):
        write_file(root / f"fits/night{i % 4}/obs{i:03d}.fits", fits_bytes(rng, rng.randint(200_000, 6_000_000)),
                   1_700_000_000.0)
    for i in range(5):
        write_file(root / f"raw/r{i}.bin", rng.randbytes(rng.randint(1, 12) * MIB), 1_700_000_000.0)
    for i in range(200):
        write_file(root / f"small/d{i % 10}/s{i:03d}.txt", rng.randbytes(rng.randint(1, 40_000)), 1_700_000_000.0)


def one_round(src: Path, dst: Path, manifest: Path, flips: int, rng: random.Random, how: str) -> dict:
    corrupt, bound = flip_random_bits(src, dst, flips, rng)
    audit = run_fitsync("audit", dst, f"--manifest={manifest}", "--json")
    found = {c["path"] for c in json.loads(audit.stdout)["manifest"]["corrupt"]} if audit.stdout else set()
    flag = "--checksum" if how == "checksum" else f"--manifest={manifest}"
    repair = run_fitsync("mirror", src, dst, flag, "--json")
    summary = json.loads(repair.stdout) if repair.returncode == 0 else {}
    after = run_fitsync("audit", dst, f"--manifest={manifest}", "--quiet")
    return {
        "repair_with": how, "flips": flips, "files_damaged": len(corrupt),
        "audit_found": len(found & corrupt), "audit_missed": len(corrupt - found), "audit_false": len(found - corrupt),
        "repair_exit": repair.returncode, "files_repaired": summary.get("files_repaired"),
        "bytes_transferred": summary.get("bytes_transferred"), "bytes_allowed": bound,
        "within_affected_blocks": summary.get("bytes_transferred", 1 << 62) <= bound,
        "dst_equals_src": snapshot(dst) == snapshot(src), "audit_after_repair": after.returncode,
    }


def main() -> int:
    opts = docopt(__doc__)
    rng = random.Random(int(opts["--seed"]))
    work = Path(opts["--workdir"] or tempfile.mkdtemp(prefix="fitsync-bitrot-"))
    src, dst, manifest = work / "src", work / "dst", work / "m.jsonl"
    build_tree(src, rng)
    copy_tree(src, dst)
    make_manifest(src, manifest)
    rounds = []
    for i in range(int(opts["--rounds"])):
        result = one_round(src, dst, manifest, int(opts["--flips"]), rng, "checksum" if i % 2 == 0 else "manifest")
        rounds.append(result)
        print(json.dumps(result), flush=True)
    if opts["--json"]:
        Path(opts["--json"]).write_text(json.dumps(rounds, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in rounds if r["audit_missed"] or r["audit_false"] or not r["within_affected_blocks"]
           or not r["dst_equals_src"] or r["audit_after_repair"] != 0]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
