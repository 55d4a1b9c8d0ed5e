"""Numba kernels: arrays and scalars in, arrays updated in place; no I/O, no Bytewax.

Compiled kernels are cached on disk (``cache=True``). Numba keys a cached function by its
own source file only, but ``driver.prequential`` inlines every model's steps from other
files of this package, so a change to a model's kernel would leave a stale compiled
driver in the cache. The locators installed below key every function of this package by
the contents of *all* its files instead: any change here recompiles what depends on it.
"""

from __future__ import annotations

import hashlib
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def _package_stamp() -> bytes:
    h = hashlib.sha256()
    for name in sorted(os.listdir(_HERE)):
        if name.endswith(".py"):
            with open(os.path.join(_HERE, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return h.digest()


def _install_locators() -> None:
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover - numba's layout changed: keep its own locators
        return
    impl = getattr(caching, "CacheImpl", None)
    classes = getattr(impl, "_locator_classes", None)
    if classes is None or any(getattr(c, "_recsys_stream", False) for c in classes):
        return
    stamp = _package_stamp()

    def make(base):
        class PackageLocator(base):
            _recsys_stream = True

            @classmethod
            def from_function(cls, py_func, py_file):
                if os.path.dirname(os.path.abspath(py_file)) != _HERE:
                    return None
                return super().from_function(py_func, py_file)

            def get_source_stamp(self):
                return stamp

        PackageLocator.__name__ = f"Package{base.__name__}"
        return PackageLocator

    mine = [make(c) for c in (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator,
                              caching.UserWideCacheLocator)]
    classes[:0] = mine


_install_locators()
