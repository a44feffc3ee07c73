# Cython declarations for the compiled twin dynacore._cy.ring (core/ring.py): Ring becomes an
# extension type with C-level attributes, and the hot paths get typed locals. Types only: the
# algorithm lives in ring.py, and every value typed here fits its C type (partition indexes and
# node indexes are < 65536, and the C-level shift _lookup_shift is below 64).

cimport cython


@cython.locals(q=Py_ssize_t, d=Py_ssize_t, before=Py_ssize_t, after=Py_ssize_t)
cdef bint _spaced(list owners, Py_ssize_t p, Py_ssize_t node) except -1


cdef class Ring:
    cdef readonly int _log2q
    cdef readonly int _shift
    cdef readonly int _lookup_shift
    cdef readonly list _owners
    cdef readonly list _nodes
    cdef readonly list _tables

    @cython.locals(table=list, p=Py_ssize_t, h=cython.ulonglong)
    cpdef tuple lookup(self, key, n)

    @cython.locals(table=list)  # shift stays a Python int: the comprehension shifts objects
    cpdef list lookup_many(self, keys, n)
