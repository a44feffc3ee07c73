# Typed stub of the compiled module dynacore._native (native/src/lib.rs).
# Each submodule has exactly the API of its pure-Python twin in dynacore.core; the parity tests
# (tests/core/) check that on every backend.
from dynacore.core import localread as localread
from dynacore.core import merkle as merkle
from dynacore.core import ring as ring
from dynacore.core import versions as versions
from dynacore.core import wire as wire

__version__: str
