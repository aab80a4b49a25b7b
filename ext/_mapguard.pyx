"""Guarded memory maps: a file truncated while fitsync reads it through an
mmap is reported as changed, not a SIGBUS that kills the process (see
mapguard.h for how). fitsync.mapped wraps this for the readers."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uintptr_t


cdef extern from "mapguard.h":
    int guard_add(uintptr_t start, size_t length) nogil
    int guard_remove(int slot) nogil


def add(mapped) -> int:
    """Register the memory of ``mapped`` (an mmap, or anything exposing a
    buffer that stays put while it is registered); the slot to pass to
    ``remove``, or -1 when it could not be guarded."""
    cdef Py_buffer view
    PyObject_GetBuffer(mapped, &view, PyBUF_SIMPLE)
    try:
        return guard_add(<uintptr_t>view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)


def remove(int slot) -> bool:
    """Withdraw ``slot``; True if a read in it faulted (its file shrank)."""
    return guard_remove(slot) == 1
