"""Allows ``python -m fitsync``."""
import sys

from fitsync.cli.main import main

sys.exit(main())
