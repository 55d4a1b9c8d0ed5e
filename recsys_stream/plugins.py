"""How the library finds the dataflows it runs, without importing them.

Dependencies point one way: ``flows/`` (the Bytewax dataflow definitions) use this
library, and the library never imports ``flows``. What must start a dataflow (the
command line, the backtest orchestration) asks for it by name through the one entry
point group the project registers in ``pyproject.toml``::

    [project.entry-points."recsys_stream.flows"]
    backtest = "flows.backtest:run_backtest"
    job = "flows.job:build_job"
    recovery = "flows.job:recovery_config"
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

GROUP = "recsys_stream.flows"


@lru_cache(maxsize=None)
def flow(name: str):
    """The object registered as ``name`` in the ``recsys_stream.flows`` entry points."""
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            return ep.load()
    raise RuntimeError(f"no dataflow {name!r} is registered under the entry point group {GROUP!r}: is the project "
                       "installed (`pip install -e .`)?")
