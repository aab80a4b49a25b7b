"""Builds the compiled core from ext/: fitsync._native (hashing, matching, FITS sums) and
fitsync._walk (directory listing, small-file reading and BLAKE3 hashing) and
fitsync._mapguard (memory maps whose file may shrink while they are read)."""
from Cython.Build import cythonize
from setuptools import Extension, setup

WALK_PARTS = ("tree", "listing", "batches", "blake3", "jsonl")

extensions = [
    Extension("fitsync._native", sources=["ext/_native.pyx"], depends=["ext/kernels.h", "ext/native_match.pxi"],
              include_dirs=["ext"], extra_compile_args=["-O3"],
              libraries=["dl"]),  # dlopen/dlsym: xxh3-128 called from C (see bind_xxh3_128)
    # _walk.pyx includes its parts: the tree walk, listings, batched reads, small-file BLAKE3, manifest lines
    Extension("fitsync._walk", sources=["ext/_walk.pyx"], include_dirs=["ext"],
              depends=["ext/b3.h", *(f"ext/walk_{part}.pxi" for part in WALK_PARTS)],
              extra_compile_args=["-O3", "-pthread", "-Wno-psabi"],  # b3.h: vectors inside inline functions only
              extra_link_args=["-pthread"]),
    # mapguard.h: a SIGBUS handler that turns a truncated mmap'd file into "changed while read"
    Extension("fitsync._mapguard", sources=["ext/_mapguard.pyx"], depends=["ext/mapguard.h"],
              include_dirs=["ext"], extra_compile_args=["-O2"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
