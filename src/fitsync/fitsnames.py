"""Recognising FITS files by name or first bytes, without importing the FITS
checker (which loads numpy): listing-heavy commands decide with this first."""

FITS_MAGIC = b"SIMPLE  ="
# Names audited as FITS (besides content starting with FITS_MAGIC).
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fz")


def looks_like_fits(name: str, first_bytes: bytes) -> bool:
    """A FITS name (gzipped or tile-compressed too), or content that starts
    like a FITS primary header."""
    return name.lower().endswith(FITS_SUFFIXES) or first_bytes.startswith(FITS_MAGIC)
