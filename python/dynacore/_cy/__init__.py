"""Cython-compiled builds of dynacore.core's twins (built by setup.py; no sources live here)."""
