"""Thin build: the Rust extension dynacore._native (setuptools-rust) and the Cython twins.

The Cython twins are the pure-Python modules of python/dynacore/core/ compiled as they are
(Cython's pure-Python mode): core/ring.py is compiled into the extension module dynacore._cy.ring,
and so on, so that the pure module and its compiled twin can be loaded side by side and compared.
There is no third copy of any algorithm. Set DYNACORE_BUILD_CYTHON=0 to skip the Cython twins in a
quick development build (the test suite then runs on the backends that were built).
"""

from __future__ import annotations

import os

from setuptools import setup
from setuptools_rust import Binding, RustExtension

TWINS = ("ring", "versions", "merkle", "wire")


def cython_extensions() -> list[object]:
    if os.environ.get("DYNACORE_BUILD_CYTHON", "1") == "0":
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    extensions = [
        Extension(f"dynacore._cy.{name}", [f"python/dynacore/core/{name}.py"]) for name in TWINS
    ]
    return cythonize(
        extensions,
        build_dir="build/cython",
        language_level=3,
        # Annotations stay hints: Cython must not turn `list` or `int` hints into exact type
        # checks that the pure module does not make, or the twins would behave differently.
        compiler_directives={"annotation_typing": False, "binding": True},
        quiet=True,
    )


setup(
    rust_extensions=[
        RustExtension(
            "dynacore._native",
            path="native/Cargo.toml",
            binding=Binding.PyO3,
            features=["python", "pyo3/extension-module"],
            debug=False,
        )
    ],
    ext_modules=cython_extensions(),
)
