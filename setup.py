"""Builds the compiled core (ext/_native.pyx) as the module fitsync._native."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("fitsync._native", sources=["ext/_native.pyx"], extra_compile_args=["-O3"]),
    Extension("fitsync._walk", sources=["ext/_walk.pyx"], extra_compile_args=["-O3"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
