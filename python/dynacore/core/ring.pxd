# Cython declarations for the compiled twin dynacore._cy.ring (core/ring.py): Ring becomes an
# extension type with C-level attributes, and the lookup paths get typed locals. Types only; the
# algorithm lives in ring.py.

cimport cython


cdef class Ring:
    cdef readonly int _log2q
    cdef readonly int _shift
    cdef readonly list _owners
    cdef readonly list _nodes
    cdef readonly list _tables

    @cython.locals(table=list, p=Py_ssize_t)
    cpdef tuple lookup(self, key, n)

    @cython.locals(table=list, shift=int)
    cpdef list lookup_many(self, keys, n)
