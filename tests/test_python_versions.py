"""fitsync runs on the Python versions pyproject.toml declares (3.10+)."""

import subprocess
import sysconfig
from pathlib import Path

import fitsync

SRC = Path(fitsync.__file__).parent


def test_nothing_in_fitsync_needs_more_than_python_3_10():
    vermin = Path(sysconfig.get_path("scripts")) / "vermin"  # installed with the test extra
    run = subprocess.run([str(vermin), "--no-tips", "--violations", "-t=3.10-", "--eval-annotations", str(SRC)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
