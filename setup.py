"""Thin build: the Rust extension dynacore._native (setuptools-rust) and the Cython twins.

The Cython twins are the pure-Python modules of python/dynacore/core/ compiled as they are
(Cython's pure-Python mode): core/ring.py is compiled into the extension module dynacore._cy.ring,
and so on, so that the pure module and its compiled twin can be loaded side by side and compared.
There is no third copy of any algorithm. Set DYNACORE_BUILD_CYTHON=0 to skip the Cython twins in a
quick development build (the test suite then runs on the backends that were built).
"""

from __future__ import annotations

import os
import shutil

from setuptools import setup
from setuptools_rust import Binding, RustExtension

TWINS = ("ring", "versions", "merkle", "wire", "localread")


def _stage_pxd_files() -> str:
    """Cython finds the .pxd of dynacore._cy.X by module name, at dynacore/_cy/X.pxd on its
    include path; the .pxd lives beside its twin as core/X.pxd, so stage it there at build time."""
    staged = os.path.join("build", "cython", "pxd")
    target = os.path.join(staged, "dynacore", "_cy")
    os.makedirs(target, exist_ok=True)
    for name in TWINS:
        source = os.path.join("python", "dynacore", "core", f"{name}.pxd")
        destination = os.path.join(target, f"{name}.pxd")
        if os.path.exists(destination):
            os.remove(destination)
        if os.path.exists(source):
            shutil.copyfile(source, destination)
    for package in ("dynacore", os.path.join("dynacore", "_cy")):
        open(os.path.join(staged, package, "__init__.pxd"), "a").close()
    return staged


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
        include_path=[_stage_pxd_files()],
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
