"""fitsync: rsync-style mirroring and integrity tool for FITS astronomy archives."""

__version__ = "0.1.0"
