"""Generate the small synthetic archive in sample/archive (run once; the output is committed).

Three nights of a fictional instrument: images with CHECKSUM/DATASUM, a
binary table, a gzip-compressed image and a plain-text log, so that the
README's first command mirrors something shaped like a real archive.
"""

import gzip
import os
import shutil

import numpy as np
from astropy.io import fits

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "archive")
rng = np.random.default_rng(20261122)


def image(path: str, shape=(64, 64), dtype=">i2", night="2026-11-01") -> None:
    data = rng.normal(1000, 30, shape).astype(dtype)
    hdu = fits.PrimaryHDU(data)
    hdu.header["OBJECT"] = "NGC 253"
    hdu.header["DATE-OBS"] = f"{night}T21:00:00"
    hdu.header["EXPTIME"] = 30.0
    fits.HDUList([hdu]).writeto(path, checksum=True, overwrite=True)


def table(path: str) -> None:
    cols = [
        fits.Column(name="TIME", format="D", array=np.linspace(0, 100, 200)),
        fits.Column(name="FLUX", format="E", array=rng.normal(1, 0.1, 200)),
    ]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="EVENTS")]).writeto(
        path, checksum=True, overwrite=True)


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    for night in ("2026-11-01", "2026-11-02", "2026-11-03"):
        d = os.path.join(ROOT, night)
        os.makedirs(d)
        for i in range(2):
            image(os.path.join(d, f"sci_{i:04d}.fits"), night=night)
        table(os.path.join(d, "events.fits"))
        with open(os.path.join(d, "night.log"), "w") as f:
            f.write(f"night {night}: 2 science frames, 1 event list\n")
    raw = os.path.join(ROOT, "2026-11-03", "flat.fits")
    image(raw, shape=(32, 32), dtype=">f4")
    with open(raw, "rb") as src, gzip.GzipFile(raw + ".gz", "wb", mtime=0) as dst:
        shutil.copyfileobj(src, dst)
    os.unlink(raw)
    for dirpath, _, names in os.walk(ROOT):
        for name in names:
            os.utime(os.path.join(dirpath, name), (1762030800, 1762030800))


if __name__ == "__main__":
    main()
