"""SSH transfers: bytes on the wire and wall time, fitsync vs rsync/scp/rclone.

Run by hand (root, sshd installed):  PYTHONPATH=src python3 benchmarks/bench_ssh.py [--size-mib=1024]
    [--repeat=3] [--only=full|delta|resume|agent] [--host=stock|fitsync]
    [--other-python=/path/to/other/venv/bin/python]
The agent runs on the (loopback) host under FITSYNC_SSH_PYTHON. By default
(--host=stock) that is a Python 3 with nothing installed: Debian's
/usr/bin/python3 where it exists, else this interpreter's base installation
run with -S (no site-packages), as on a stock server; the agent then makes the
STDLIB signature (zlib and hashlib). --host=fitsync runs it with the
interpreter running this script (fitsync installed on both ends).

A real sshd on 127.0.0.1 is reached through a small counting TCP relay, so
bytes are counted on the wire, independently of any tool's own counters.

- delta: a FITS file of --size-mib with three edits (a header value changed;
  the header grown by one 2880-byte record; 1 MiB overwritten mid-data),
  each pulled and pushed by `fitsync mirror` and by `rsync -e ssh`
  (interleaved, medians of --repeat); with --other-python, a second fitsync
  install (e.g. an older version, for before-and-after) runs interleaved
  with them as "fitsync-other". Both copies are written back to disk
  and read into the page cache before each timed run.
- full: the whole file copied by fitsync (mirror, and the bare SftpRemote
  stream), scp, `rsync -W -e ssh`, and rclone over sftp, each connecting to
  sshd directly (bytes are the file's; the relay would cost CPU).

- resume: a push of a --size-mib file killed (SIGKILL, as a crash or a cut
  cable does) once half of it is on the host, then run again: the rerun's
  time and bytes, `fitsync mirror` against `rsync --partial-dir` (which then
  uses the kept half as its basis). Interleaved, medians of --repeat.

- agent: the agent's signature of the FITS file on the host's interpreter
  (the STDLIB suite on a stock python3: zlib and hashlib on all cores), run
  as the host runs it, beside `sha256sum` and `b3sum` of the same file
  (interleaved, warm cache, medians of --repeat).

Results go to stdout as a table and to benchmarks/work/bench_ssh.json.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from sshd_fixture import SshServer  # noqa: E402

sys.path.insert(0, str(HERE))
from timing import installed_env, warm  # noqa: E402

WORK = HERE / "work" / "ssh"


class CountingRelay:
    """127.0.0.1:port -> target, counting bytes in each direction."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.up = self.down = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.up = self.down = 0

    @property
    def total(self) -> int:
        return self.up + self.down

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            upstream = socket.create_connection(self.target)
            for a, b, direction in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pump, args=(a, b, direction), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def host_python(host: str) -> str:
    """The agent's interpreter for --host (see the module docstring)."""
    if host == "fitsync":
        return sys.executable
    if os.path.exists("/usr/bin/python3"):
        probe = subprocess.run(["/usr/bin/python3", "-c", "import blake3"], capture_output=True)
        if probe.returncode != 0:
            return "/usr/bin/python3"
    return f"{os.path.realpath(sys.base_prefix + '/bin/python3')} -S"


def fits_file(path: Path, size: int) -> None:
    """One primary HDU with a header of 36 cards and `size` bytes of 8-bit data."""
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    1",
             f"NAXIS1  = {size:20d}", "OBJECT  = 'PKS 2155-304'"] + [f"HISTORY bench {i}" for i in range(30)]
    header = "".join(c.ljust(80) for c in cards + ["END"]).ljust(2880).encode()
    with open(path, "wb") as f:
        f.write(header)
        left = size
        while left:
            n = min(left, 64 << 20)
            f.write(os.urandom(n))
            left -= n
        f.write(b"\0" * (-size % 2880))


def edit(path: Path, case: str) -> None:
    data = bytearray(path.read_bytes()[:2880])
    if case == "header-value":
        data[4 * 80:5 * 80] = "OBJECT  = 'PKS 2155-305'".ljust(80).encode()
        with open(path, "r+b") as f:
            f.write(data)
    elif case == "header-grown":
        new_cards = [f"HISTORY added {i}" for i in range(36)]
        body = path.read_bytes()
        end = body.index(b"END" + b" " * 77)
        extra = "".join(c.ljust(80) for c in new_cards).encode()
        path.write_bytes(body[:end] + extra + body[end:])  # the header grows by one record
    elif case == "data-1mib":
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            f.write(os.urandom(1 << 20))
    os.utime(path, (time.time() + 100, time.time() + 100))


class Bench:
    def __init__(self, size_mib: int, repeat: int, host: str = "stock"):
        self.size = size_mib << 20
        self.repeat = repeat
        if WORK.exists():
            shutil.rmtree(WORK)
        WORK.mkdir(parents=True)
        self.sshd = SshServer(WORK / "sshd").start()
        self.relay = CountingRelay(self.sshd.port)
        home = self.sshd.client_home(WORK / "home")
        with open(home / ".ssh" / "known_hosts", "a") as f:
            f.write(self.sshd.host_key_line(self.sshd.port).replace(f":{self.sshd.port}", f":{self.relay.port}"))
        self.env = dict(installed_env(), HOME=str(home))
        self.env.setdefault("FITSYNC_SSH_PYTHON", host_python(host))
        self.host = host
        self.ssh_cmd = (f"ssh -p {self.relay.port} -i {self.sshd.client_key} -o StrictHostKeyChecking=no "
                        f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")
        self.results: dict = {}
        self.other_python = None  # --other-python: a second install timed beside (delta rows "fitsync-other")

    def url(self, path: Path, port: int | None = None) -> str:
        return f"sftp://127.0.0.1:{port or self.relay.port}{path}"

    def measure(self, name: str, argv: list[str], env=None) -> tuple[float, int]:
        self.relay.reset()
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env or self.env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        time.sleep(0.2)  # let the relay count the last packets
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        self.results.setdefault(name, []).append((elapsed, self.relay.total))
        return elapsed, self.relay.total

    def fitsync(self, *args, python: str | None = None) -> list[str]:
        return [python or sys.executable, "-m", "fitsync", *map(str, args), "--quiet"]

    # -- full copy ----------------------------------------------------------------------
    def full(self) -> None:
        # Straight to sshd, not through the counting relay: a full copy's bytes
        # are the file's, and the relay's own CPU (a Python process pumping
        # 1 GiB on a 2-core machine) would slow every tool.
        port = self.sshd.port
        direct_ssh = self.ssh_cmd.replace(f"-p {self.relay.port}", f"-p {port}")
        src = WORK / "full-src"
        src.mkdir()
        fits_file(src / "big.fits", self.size)
        stream = [sys.executable, "-c", (
            "import sys,time\nfrom fitsync.remotes import open_remote\n"
            f"r=open_remote({self.url(src, port)!r},{{}})\nf=r.open_read('big.fits')\n"
            "while f.read(8<<20): pass\n")]
        rclone_env = dict(self.env, RCLONE_CONFIG_BENCH_TYPE="sftp", RCLONE_CONFIG_BENCH_HOST="127.0.0.1",
                          RCLONE_CONFIG_BENCH_PORT=str(port), RCLONE_CONFIG_BENCH_USER="root",
                          RCLONE_CONFIG_BENCH_KEY_FILE=str(self.sshd.client_key))
        for _ in range(self.repeat):
            for name, make in (
                ("fitsync mirror", lambda d: self.fitsync("mirror", self.url(src, port), d)),
                ("fitsync stream", lambda d: stream),
                ("scp", lambda d: ["scp", "-q", "-P", str(port), "-i", str(self.sshd.client_key),
                                   "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                                   f"root@127.0.0.1:{src}/big.fits", str(d)]),
                ("rsync -W", lambda d: ["rsync", "-a", "-W", "-e", direct_ssh, f"root@127.0.0.1:{src}/", f"{d}/"]),
                ("rclone sftp", lambda d: ["rclone", "copy", f"bench:{src}", str(d)]),
            ):
                dst = WORK / "full-dst"
                shutil.rmtree(dst, ignore_errors=True)
                dst.mkdir()
                warm(str(src))  # idle pages leave the cache after ~30 s here
                self.measure(f"full: {name}", make(dst), env=rclone_env if "rclone" in name else None)
        shutil.rmtree(WORK / "full-dst", ignore_errors=True)
        shutil.rmtree(src)

    # -- the agent's signature throughput ----------------------------------------------
    def agent(self) -> None:
        path = WORK / "agent.fits"
        fits_file(path, self.size)
        agent_dir = WORK / "agent"  # the one file the host runs, as fitsync ships it
        agent_dir.mkdir(exist_ok=True)
        from fitsync.remotes.sftp_agent import agent_payload

        (agent_dir / "agent.py").write_bytes(agent_payload())
        code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import agent\n"
                "class A: signature = 'stdlib'\n"
                "agent.signature_of(sys.argv[2], {'fits': True, 'block_records': [2, 64]}, A())\n")
        python = self.env["FITSYNC_SSH_PYTHON"].split()
        for _ in range(self.repeat):
            for name, argv in (("agent signature", [*python, "-c", code, str(agent_dir), str(path)]),
                               ("sha256sum", ["sha256sum", str(path)]), ("b3sum", ["b3sum", str(path)])):
                warm(str(path))
                self.measure(f"agent: {name}", argv)
        path.unlink()

    # -- deltas ---------------------------------------------------------------------------
    def delta(self) -> None:
        base = WORK / "base.fits"
        fits_file(base, self.size)
        for case in ("header-value", "header-grown", "data-1mib"):
            for _ in range(self.repeat):
                for tool in ("fitsync", "rsync") + (("fitsync-other",) if self.other_python else ()):
                    for direction in ("pull", "push"):
                        self._delta_once(base, case, tool, direction)
        base.unlink()

    def _delta_once(self, base: Path, case: str, tool: str, direction: str) -> None:
        new_side, old_side = WORK / "new", WORK / "old"
        for d in (new_side, old_side):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
        shutil.copy2(base, old_side / "f.fits")
        shutil.copy2(base, new_side / "f.fits")
        edit(new_side / "f.fits", case)
        warm(str(new_side), str(old_side))  # no writeback of the fresh copies inside the timed run
        # pull: the remote holds the new version; push: the local side does
        if direction == "pull":
            remote, local = new_side, old_side
            argv = {"fitsync": self.fitsync("mirror", self.url(remote), local),
                    "fitsync-other": self.fitsync("mirror", self.url(remote), local, python=self.other_python),
                    "rsync": ["rsync", "-a", "--no-W", "-e", self.ssh_cmd, f"root@127.0.0.1:{remote}/",
                              f"{local}/"]}[tool]
        else:
            local, remote = new_side, old_side
            argv = {"fitsync": self.fitsync("mirror", local, self.url(remote)),
                    "fitsync-other": self.fitsync("mirror", local, self.url(remote), python=self.other_python),
                    "rsync": ["rsync", "-a", "--no-W", "-e", self.ssh_cmd, f"{local}/",
                              f"root@127.0.0.1:{remote}/"]}[tool]
        self.measure(f"{case} {direction}: {tool}", argv)
        if (new_side / "f.fits").read_bytes() != (old_side / "f.fits").read_bytes():
            raise RuntimeError(f"{tool} {direction} {case}: the copy differs from the source")

    # -- a push killed halfway, then run again --------------------------------------------
    def resume(self) -> None:
        src = WORK / "resume-src"
        src.mkdir()
        fits_file(src / "big.fits", self.size)
        for _ in range(self.repeat):
            for tool in ("fitsync", "rsync"):
                dst = WORK / "resume-dst"
                shutil.rmtree(dst, ignore_errors=True)
                dst.mkdir()
                argv = {"fitsync": self.fitsync("mirror", src, self.url(dst)),
                        "rsync": ["rsync", "-a", "--partial-dir=.rsync-partial", "-e", self.ssh_cmd, f"{src}/",
                                  f"root@127.0.0.1:{dst}/"]}[tool]
                self._kill_halfway(argv, dst, tool)
                warm(str(src), str(dst))
                self.measure(f"resume push: {tool}", argv)
                if (dst / "big.fits").read_bytes() != (src / "big.fits").read_bytes():
                    raise RuntimeError(f"{tool}: the resumed copy differs from the source")
        shutil.rmtree(WORK / "resume-dst", ignore_errors=True)
        shutil.rmtree(src)

    def _kill_halfway(self, argv: list[str], dst: Path, tool: str) -> None:
        """Run ``argv`` until half the file is on the host (in any file under
        ``dst``: each tool keeps its temporary elsewhere), then SIGKILL it."""
        import signal

        warm(str(WORK / "resume-src"))
        proc = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            held = 0
            for dirpath, _, names in os.walk(dst):
                for name in names:
                    try:
                        held = max(held, os.path.getsize(os.path.join(dirpath, name)))
                    except OSError:
                        pass
            if held >= self.size // 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait()
        if (dst / "big.fits").exists():
            raise RuntimeError(f"{tool} finished before it could be killed halfway; use a larger --size-mib")
        time.sleep(1.0)  # the host's side notices the lost connection and keeps what it has

    def report(self) -> None:
        rows = {}
        for name, runs in self.results.items():
            secs = statistics.median(r[0] for r in runs)
            wire = statistics.median(r[1] for r in runs)
            rows[name] = {"seconds": round(secs, 3), "wire_bytes": int(wire), "runs": len(runs),
                          "GB_per_s": round(self.size / secs / 1e9, 3)}
        print(f"agent host: {self.host} ({self.env['FITSYNC_SSH_PYTHON']})")
        print(f"{'case':40s} {'median s':>9s} {'wire bytes':>14s} {'GB/s':>7s}")
        for name, row in rows.items():
            print(f"{name:40s} {row['seconds']:9.3f} {row['wire_bytes']:14,d} {row['GB_per_s']:7.3f}")
        ratios = self._ratios(rows)
        (HERE / "work" / "bench_ssh.json").write_text(json.dumps(
            {"size": self.size, "host": self.host, "rows": rows, "ratios": ratios}, indent=2))

    @staticmethod
    def _ratios(rows: dict) -> dict:
        """fitsync / rsync per delta case (time and wire bytes), and the median time ratio."""
        out = {}
        for name, row in rows.items():
            case, _, tool = name.rpartition(": ")
            if tool in ("fitsync", "fitsync-other") and f"{case}: rsync" in rows:
                theirs = rows[f"{case}: rsync"]
                key = case if tool == "fitsync" else f"{case} (other)"
                out[key] = {"time": round(row["seconds"] / theirs["seconds"], 3),
                            "wire": round(row["wire_bytes"] / theirs["wire_bytes"], 4)}
        if out:
            print(f"\n{'delta case':28s} {'time vs rsync':>14s} {'wire vs rsync':>14s}")
            for case, r in out.items():
                print(f"{case:28s} {r['time']:13.2f}x {r['wire']:13.4f}x")
            medians = {}
            for key, other in (("median_time_ratio", False), ("median_time_ratio_other", True)):
                times = [r["time"] for case, r in out.items() if case.endswith("(other)") == other]
                if times:
                    medians[key] = statistics.median(times)
                    print(f"{key.replace('_', ' '):28s} {medians[key]:13.2f}x")
            out.update(medians)
        return out

    def close(self) -> None:
        self.sshd.stop()


def main(argv: list[str]) -> int:
    opts = dict(a.lstrip("-").split("=", 1) for a in argv if "=" in a)
    bench = Bench(int(opts.get("size-mib", 1024)), int(opts.get("repeat", 3)), opts.get("host", "stock"))
    bench.other_python = opts.get("other-python")
    try:
        if opts.get("only") in (None, "full"):
            bench.full()
        if opts.get("only") in (None, "delta"):
            bench.delta()
        if opts.get("only") in (None, "resume"):
            bench.resume()
        if opts.get("only") in (None, "agent"):
            bench.agent()
    finally:
        bench.report()
        bench.close()
        shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
