"""Pure-Python twins of the compiled hot paths: ring, versions, merkle, wire, localread.

No I/O and no clocks here. Each module is also compiled by Cython (as dynacore._cy.<name>) and has
a Rust twin (dynacore._native.<name>) with the same API and the same results. Modules here import
only the standard library, xxhash, blake3 and dynacore.errors/limits, by absolute imports, so that
the same file compiles to a module of another package.
"""
