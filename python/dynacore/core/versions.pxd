# C types for the Cython build of versions.py (dynacore._cy.versions); no algorithm lives here.
#
# Private helpers become C functions with typed positions and counters. Counters are unsigned
# 64-bit, exactly the range the encoding allows; versions.py checks every bound before it adds or
# shifts, so the C arithmetic never wraps and both builds take the same branches.

cimport cython

ctypedef unsigned long long u64

@cython.locals(b=cython.uint, low=u64, result=u64, shift=cython.int)
cdef (u64, Py_ssize_t) _varint(bytes data, Py_ssize_t pos, Py_ssize_t end) except *

@cython.locals(length=u64, stop=Py_ssize_t, node=bytes)
cdef tuple _node_at(bytes data, Py_ssize_t pos, Py_ssize_t end)

@cython.locals(length=u64, stop=Py_ssize_t)
cdef tuple _bytes_at(bytes data, Py_ssize_t pos, Py_ssize_t end)

cdef tuple _decode_set(object data)

cdef _check_utf8(bytes node)

@cython.locals(end=Py_ssize_t, pos=Py_ssize_t, stop=Py_ssize_t, length=cython.uint, count=u64,
               _k=u64, counter=u64, n_values=u64, entries=list, vals=list, node=bytes,
               prev=bytes, value=bytes)
cdef tuple _decode_set_bytes(bytes data)

@cython.locals(count=u64, k=u64, anon=list, value=bytes)
cdef list _decode_anon(bytes data, Py_ssize_t pos, Py_ssize_t end)

cdef list _decode_vv(object data)

@cython.locals(end=Py_ssize_t, pos=Py_ssize_t, count=u64, _k=u64, counter=u64, out=list,
               node=bytes, prev=bytes)
cdef list _decode_vv_bytes(bytes data)

cdef _put_varint(bytearray out, u64 value)

@cython.locals(out=bytearray, node=bytes, counter=u64, vals=list, value=bytes,
               length=Py_ssize_t)
cdef bytes _encode_set(list entries, list anon)

@cython.locals(out=bytearray, node=bytes, counter=u64)
cdef bytes _encode_vv(list vv)

@cython.locals(ca=u64, cb=u64, keep=u64, la=list, lb=list)
cdef tuple _merge_entry(tuple a, tuple b)

@cython.locals(out=list, i=Py_ssize_t, j=Py_ssize_t, na=Py_ssize_t, nb=Py_ssize_t, a=tuple,
               b=tuple)
cdef list _sync_entries(list ea, list eb)

cdef list _union_anon(list a, list b)

@cython.locals(out=list, i=Py_ssize_t, j=Py_ssize_t, ne=Py_ssize_t, nc=Py_ssize_t, counter=u64,
               seen=u64, vals=list)
cdef list _apply_context(list entries, list ctx)

@cython.locals(out=list, i=Py_ssize_t, vals=list)
cdef list _add_event(list entries, bytes node, bytes value)

cdef list _all_values(list entries, list anon)

cdef tuple _sync_decoded(tuple a, tuple b)

@cython.locals(i=Py_ssize_t, na=Py_ssize_t)
cdef bint _descends(list a, list b) except -1
