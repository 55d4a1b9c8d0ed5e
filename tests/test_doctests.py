"""The docstring examples (``>>>``) of every module of the ``recsys_stream`` package, run
as tests. Modules are found with ``pkgutil.walk_packages``; one that cannot be imported
fails here (nothing is skipped), and a module without examples passes."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import recsys_stream

PACKAGE = Path(recsys_stream.__file__).parent
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _walk() -> tuple[list[str], list[str]]:
    """(every module's name, the names walk_packages could not import)."""
    failed: list[str] = []
    names = [m.name for m in pkgutil.walk_packages(recsys_stream.__path__, "recsys_stream.", onerror=failed.append)]
    return ["recsys_stream", *names], failed


MODULES, UNIMPORTABLE = _walk()


def test_every_module_is_walked():
    assert UNIMPORTABLE == []
    on_disk = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        on_disk.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert on_disk == set(MODULES)  # a folder without __init__.py would be missed silently


def test_some_module_has_examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    assert any(t.examples for name in MODULES for t in finder.find(importlib.import_module(name)))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for test in doctest.DocTestFinder(exclude_empty=True).find(module):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
