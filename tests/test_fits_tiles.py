"""Tile-compressed images (.fz): ZHECKSUM and ZDATASUM, the checksums of the
original image, besides CHECKSUM/DATASUM of the compressed table."""

from __future__ import annotations

import base64
import gzip
import io

import numpy as np
from astropy.io import fits as afits

from fitsync import fits_stream, fits_tiles, fitsaudit

# A real `fpack` (CFITSIO 4.2) output of a 24x32 int16 primary image and a
# 10x12 int32 "SCI" extension, written with checksums: fpack stores ZHECKSUM
# and ZDATASUM of each original HDU. (gzip + base64 of the 14400-byte file.)
FPACK_FILE = gzip.decompress(base64.b64decode("""
    H4sIAAAAAAACA+1aCVQT5xaesFmgKlpbQZ51pGoIoiSThAQeVEIIEGWJSQAJuGSZQJQsJoMStaK4AXqeRfQQpVoQBau2rrhUsdbi
    U1pireJa664VpUXlVa228P4k4wMsiaJ959l35jvn585MMl/u/99/bu79iIgfL4jjwXA43AXEcBCsVGWhsEKLGmC5VqPU6tUwpoWj
    +WIRbMCkGoVUr+h0SyRfLOCP65qPFgz4NNlqGaqHtUpYpsIMsA4cK6SYFNapctCsP96TwBnHF8F2/KN24rPSSHOApw7AGyfmJUQ5
    mK91ahYqA4rBaqnRMm1MqtLAaA6GagwqraYTPzcxPp6XIAZH1hv9o7PQHJUMLBlfLc1AYbFeqjHotHoMFhkNGKqmwJYllGKwygAr
    UKVKgypgwE3mGDC9VqNVG9v5wOLC1su6TKNBJTeQA+Fp2qxsNQrTWcGBsM5CT2eG/B2so0yuVaChMEKl0jjDOCNHjgTvAH+YIbEw
    N5bHHSNKig+HyfTMSDZTwmHSlWAASwYfEgTHRiXB8kxUPsWQrYazdWDmwCWEigSPoNFGIIiYSg9FqKEMOj7fKI6YA+jA+pHbw9B+
    GGSLQrZGhb0YqzUYBAgQIECAAAECfyFYykkRPzEB1EOR/AQxJzKOR+7wchCozjRSvRHGpJai8D81pF0+R/UzzAZ87BGgboZlRsxx
    nftC9TMC+JARCpXa5pQ0q7O3dvloDvybrlJgmZZy3MYBiluHvlr5kK75EEan+l6vnW6w8Nl3DkDATUyylM9/5KNRaXTAZ1DNQC1s
    Bh0qV4EZ27oGPSrtmi/GLp+FEvBpNaiNI0OvzdbB/np0arZKD6rdKahxulavoDzTYkTzeXFRIvt87fNVqtAshXXGqFSeaZl+Vy2L
    OFXAs8aDDFoHgZAnEvGiJlqqdLJt/2VJZaCvAl2Hjc/6KQ4gjk4Uxtv4aIJIfwadAnfez9a54k3MUydD4WlSvcoalixUkwHiL9Xr
    QesEIOHHc2Ic9ZftjwTeaFkaTbVOjxoMlt7I2kV1gETMj+PZ2X90pEN8MdC3Giy9qgztSPgsrHyIg/h2l48bL7CEBKyfkM/lTQSu
    dl6/p/daZizNytDqVVim2n48JAmceDy+kXGJoJXjSzommM58siytfIrNY7t8yZw4Guxg/ax9uK0vt9E5htU/xOZfqphnyV3P5D/r
    02+hs3X4/rRAGAmEGYEw2JJsSlf+IY7yVTf5QL9v8fCZ58O6Kckvk+8lIptgYnc/4yqJwbFM0s6HJ3y7eontSbI+dZhRh8LPj4c1
    4dtdv/b8gjM/zf4GB3w0e/ul++uHJ3w7+b77fLigYyce3UZipIgnTOYJwX5RqjCDUSOHwX7DDOSXrA8k7foLB5VzOBIZk6OQWe1L
    6S8SXIABfAjCpiEshI0wX0F/6aAPccdksHmxShYXH6+qD9HobCqDxQxhIIQ+RMAOIAgKgGyg4MfDwRDh57Px8yr8tRP4+W82SyLb
    rpOEuJ2F20rcHsftY5t1GoLbBNzm2Hic1uLnZvz8oc06+9muO8fjdjpuy3H7DemsySk37DZ5P/+7iQ2/l99ABDStfn5W3HfrU96+
    6jxsze5exstDEP9ToaFQq8nZvG/h6cYNdfmDR21vmmw+Yr5XsT3O/Mk0/aBsybnxl39unJjLPONGumuCbp/a7ORV0Nwz5I2U5t4U
    5R3VpepGd1YSfXI589T+8W9+UrpuxAfmoRBpSr7bpbEuu2n8jdtOynyjFguKr9QZPDmjAmr7zl1WO/qT4qaey/tQXf1J3ibXi1XZ
    FzaZOefiC+aHNbfUf7k0Zs/i4wuLN3v66cs8x3y0Yf1blQMHfTWH5GNyujpml9t6xgd3P4q5v6HimHTL+ZyUgkvvMH4a0Gftp5W7
    GKWbePWX3oIgX5MLdmG4Wjd38aRF6+aXJfOH+lBS0r7+ZmqNeOwJ/9LtpTFNy4LufiuW3SW1mKCqslp4z/p1LVL3tapLxUtOVRf9
    dvmHwqrd767K9J227ovwrSFvel/r6wUxTa7vbQsqKrldOPpb7wkTfCcH9ph++J5XOTPVN7p6xpzLssfjyI3FcIMXtM/kUkS95V6v
    Ve2MTI7dwTTPjK0VtpHSUmWFD4cUvzfKL2bfZGnvD3+IgG6berRulgRO3bLvwIRtjcUS086za4Qs7vlCMnPw/W3jZ98b9FnfeZES
    rw8hkon0uOyHgAFpc8/0zQxSnguv5b7TsKpWksuqT/M/9qTsM/oybe+j+cgkyGjqMcIjZo1PQ/3Kfp/7oks5/T0KZ2Y2jKy5eaNw
    PLrujuGwOKf2uzEzIdIhk8vOsdfncy8+8Vod+HFOxftK408Lhl9Y+OnkGb/cvD+z96GgxinunhfaIGieyal6T/AdcsTW5VGTdxTs
    YyGDVs5B67h+pwd572ochTG8Kh/IjowtnkP6wkRybjrjWZEQ3e/XO+d/wdKvLQ6d5peqOEKOKR9S8sXq8LuG67vzvA/PIVFMJFKk
    T36Va4A/W1Jza5Xcpac+7RinLrfAuKxhyoUTOby023m7Fz7w2Qq5m5w5v7OOP/wsrw4e7hNc5t2yoIX/nuSX5LhtPuFIRIMmg3eg
    umfO55MglYk0YFfZ6MWy3J6tLv8aPsvPTfzW9rKdlT4+RS3Bkosf8GI1V5Rf/1h1EoLKTc5/i2h1T1w7JmE1S7Wjyfx9KaarYCjC
    LsZ5M7FYD/dVQ6cuHHfk/LHLpGMmV6+Uq+mu3xel6Ph9Sg5VeeyNi3c98Pb7czafWHDlYQ7zwbyR80NWIQGkSpNr4K6TjwYqWpsT
    bogoOQrOmVt+0bPSq9x+29R/B60tY3qAfj9H6NYPajA592IlDthguPFh5eAhrRfTK5r7zGbxgt0W5L57P2xlM8UY8tXypLpgBZRm
    Im2fYcQ2fTz80Nlgwdm9exfscX+HUV0UFNiqpqZvIe9vZN1T+OT5CCACBAgQIEDgfwtCf/7v6c806p+pP8N0hEXoz93Un+l/Jf2Z
    RujP/9/6M+Ml+NrzM74Tn/HP9jux5yfmF9CLrev3GuvFtD9ZLwb5uft8eIJ+gd8T6qR6qRrFUL2jLzpJjAO+zvnUmqCf96XZ4f8V
    Ii7feqnzfmnfKRrg3XPnG82PE/OE1udDiF96WSn7WT07hcWXjGPEpqbg41X1bBaVSUXocFf5/qX0bKZOGsJWJ7GYaol1vKqezabS
    GAiTwQ4mv4J/hJ792unPg/FS+umxZXDwcxlu8/Dra3H7FW6v2yzJFbfDIMjj6yUQaRvL3evLGs/AIOG8iKse8/0ep7uGxT65Fhg2
    CSK5lCyBnAtCpb0O53NPlAwsmNrcn7rszLehMcvzZpsOtrXuObYcgrg3iwQth3ufC/CpciX139e0bsWiU7vq3CgeByEodsISCDr1
    zYOwFfm8mvVD5TUVPTLL5MeFF37e+Gtov7bWo+nAgwH502gr2Hlk4f6FSu6BLRuWL6IfDHLaOFfQ1kZ5DF4nT6CWlzObQvyvjQ2v
    Tgt4MnPV0KiVhefGsiLaWkvfBR78c235jYFH57bMrl85hLre7R/m07ylG39tq1kB1sPcDBjqTy7wSz3L5z/i3utjfrSXn5uQcDB5
    dERSwUGINOk6YCi53by51HylZGLp3v5bl91cak4+l/lG2erTEUfbWrdQwBwezaL4fklb5Akhqgcn6D82NKxomH3n7VuMXgeJxo4A
    AQIECBAgQOA1xb8BTWMuG0A4AAA=
"""))


def write(tmp_path, data: bytes, name: str = "t.fits.fz") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def heap_offset(data: bytes, index: int) -> int:
    with afits.open(io.BytesIO(data), disable_image_compression=True) as hdul:
        info = hdul[index].fileinfo()
        return info["datLoc"] + hdul[index].header["NAXIS1"] * hdul[index].header["NAXIS2"]


def test_fpack_output_verifies_zhecksum_and_zdatasum(tmp_path):
    report = fitsaudit.check_file(write(tmp_path, FPACK_FILE))
    assert report.status == "ok"
    assert [(h.checksum, h.datasum, h.zhecksum, h.zdatasum) for h in report.hdus] == [
        ("ok", "ok", "absent", "absent"), ("ok", "ok", "ok", "ok"), ("ok", "ok", "ok", "ok")
    ]


# The header `funpack` (CFITSIO 4.2) writes for the SCI extension of FPACK_FILE.
FUNPACK_SCI_HEADER = [
    "XTENSION= 'IMAGE   '           / Image extension",
    "BITPIX  =                   32 / array data type",
    "NAXIS   =                    2 / number of array dimensions",
    "NAXIS1  =                   12",
    "NAXIS2  =                   10",
    "PCOUNT  =                    0 / number of parameters",
    "GCOUNT  =                    1 / number of groups",
    "EXTNAME = 'SCI     '           / extension name",
    "FILTER  = 'R       '",
    "CHECKSUM= 'W7IZX4HYW4HYW4HY'   / HDU checksum updated 2026-11-22T03:20:43",
    "DATASUM = '705023  '           / data unit checksum updated 2026-11-22T03:20:43",
    "END",
]


def test_rebuilt_image_header_is_what_funpack_writes():
    check = fits_stream.StreamCheck("t.fits.fz")
    check.update(FPACK_FILE)
    sci = check.finish().hdus[2]
    rebuilt = fits_tiles.image_header_of(sci.info.header)
    cards = [rebuilt[i : i + 80].decode().rstrip() for i in range(0, len(rebuilt), 80)]
    assert [c for c in cards if c] == FUNPACK_SCI_HEADER
    assert len(rebuilt) == 2880


def test_changed_tile_byte_is_broken(tmp_path):
    data = bytearray(FPACK_FILE)
    data[heap_offset(FPACK_FILE, 1) + 20] ^= 0x08
    report = fitsaudit.check_file(write(tmp_path, bytes(data)))
    assert report.status == "broken"
    assert report.hdus[1].datasum == "bad"


def compressed_with_zdatasum(image: np.ndarray, **compression) -> bytes:
    """An astropy tile-compressed file whose table has no CHECKSUM/DATASUM,
    only ZDATASUM: the DATASUM astropy gives the original image."""
    plain = io.BytesIO()
    afits.PrimaryHDU(image).writeto(plain, checksum=True)
    zdatasum = afits.getheader(io.BytesIO(plain.getvalue()))["DATASUM"]
    packed = io.BytesIO()
    afits.HDUList([afits.PrimaryHDU(), afits.CompImageHDU(image, **compression)]).writeto(packed)
    with afits.open(io.BytesIO(packed.getvalue()), disable_image_compression=True) as hdul:
        hdul[1].header["ZDATASUM"] = zdatasum
        out = io.BytesIO()
        hdul.writeto(out)
    return out.getvalue()


def test_zdatasum_alone_catches_a_changed_tile(tmp_path):
    image = np.random.default_rng(3).integers(-2000, 2000, size=(64, 64)).astype(np.int16)
    data = compressed_with_zdatasum(image, compression_type="GZIP_2")
    clean = fitsaudit.check_file(write(tmp_path, data))
    assert clean.status == "ok"
    assert [(h.checksum, h.datasum, h.zdatasum) for h in clean.hdus][1] == ("absent", "absent", "ok")
    damaged = bytearray(data)
    damaged[heap_offset(data, 1) + 200] ^= 0x01
    report = fitsaudit.check_file(write(tmp_path, bytes(damaged)))
    assert report.status == "broken"
    assert {p.kind for p in report.all_problems} & {"zdatasum-bad", "tile-corrupt"}


def test_quantized_float_tiles_cannot_give_back_zdatasum(tmp_path):
    image = np.random.default_rng(4).normal(size=(40, 40)).astype(np.float32)
    data = compressed_with_zdatasum(image, compression_type="RICE_1", quantize_level=16)
    report = fitsaudit.check_file(write(tmp_path, data))
    assert report.status == "ok" and report.hdus[1].zdatasum == "unchecked"
