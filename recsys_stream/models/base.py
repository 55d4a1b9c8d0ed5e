"""The contract every online model follows (see docs/contract.md for a worked example).

A model is three things:

- its hyper-parameters, a frozen ``Params`` dataclass (defaults, validation);
- its state, declared as ``ArraySpec``s on each side (``user_specs``: rows keyed by user;
  ``item_specs``: rows keyed by item and item-global arrays), assembled into the named
  tuple its kernel steps read (``kernel_state``); the hyper-parameters travel in the same
  tuple, packed by field name into the kernel's declared layout (``pack``);
- its kernel steps, registered with ``kernels.driver`` for that tuple's type.

Everything else (ids, rows, growing arrays, the prequential loop, metrics, lists,
checkpoints) is the same for every model and lives outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from ..kernels.layout import EVALUATE, LEARN, RANK
from ..state import ArraySpec


class ModelDivergedError(ArithmeticError):
    """A parameter became NaN or Inf after an update (raised instead of spreading it)."""

    def __init__(self, model: str, user: str, item: str, seq: int, hint: str = ""):
        self.model, self.user, self.item, self.seq = model, user, item, seq
        msg = (
            f"model {model!r} diverged: a parameter became NaN/Inf after learning event #{seq} "
            f"(user {user!r}, item {item!r})"
        )
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


def _coerce(value, typ: type, name: str):
    """Convert ``value`` (often a command-line string) to the parameter's type."""
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, (int, float)):
            return bool(value)
    else:
        try:
            if typ is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return typ(value)
        except (TypeError, ValueError, OverflowError):
            pass
    raise ValueError(f"parameter {name!r} expects {typ.__name__}, got {value!r}")


@dataclass(frozen=True)
class Params:
    """Base of model hyper-parameters: immutable, with defaults, validated.

    A subclass may list ``POSITIVE`` (must be > 0), ``NON_NEGATIVE`` (>= 0) and
    ``UNIT`` (in [0, 1]) field names; every float must be finite.
    """

    POSITIVE = ()
    NON_NEGATIVE = ()
    UNIT = ()

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"parameter {f.name!r} must be finite, got {v!r}")
            if f.name in self.POSITIVE and not v > 0:
                raise ValueError(f"parameter {f.name!r} must be > 0, got {v!r}")
            if f.name in self.NON_NEGATIVE and not v >= 0:
                raise ValueError(f"parameter {f.name!r} must be >= 0, got {v!r}")
            if f.name in self.UNIT and not 0 <= v <= 1:
                raise ValueError(f"parameter {f.name!r} must be in [0, 1], got {v!r}")

    def replace(self, **changes) -> "Params":
        known = {f.name for f in fields(self)}
        bad = set(changes) - known
        if bad:
            names = ", ".join(repr(b) for b in sorted(bad))
            raise ValueError(f"{names} {'does' if len(bad) == 1 else 'do'} not apply to this model; its parameters: "
                             f"{', '.join(sorted(known)) or 'none'}")
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in changes.items():
            kw[k] = _coerce(v, type(kw[k]), k)
        return type(self)(**kw)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def pack(layout: type, params: Params, **extra):
    """The kernel's hyper-parameter tuple ``layout`` (a namedtuple class), each field taken
    by name from ``params`` (or ``extra``): the layout is declared once, in the kernel."""
    values = params.as_dict() | extra
    missing = [f for f in layout._fields if f not in values]
    if missing:
        raise TypeError(f"{layout.__name__} needs {missing}, which {type(params).__name__} does not have")
    return layout(**{f: values[f] for f in layout._fields})


class Model:
    """Base class; subclasses set the class attributes and implement the specs and
    ``kernel_state`` (see the module docstring)."""

    name = "?"
    predicts_rating = False  # rmse/mae
    predicts_like = False  # logloss/auc
    ranks = True  # ranking metrics by default
    uses_features = False  # needs user/item side-feature rows
    reason_sources = False  # its reasons name the candidate sources that proposed an item (the hybrid)
    params_type: type = Params

    def __init__(self, params: Params, rank: bool | None = None):
        self.params = params
        self.rank = self.ranks if rank is None else rank

    def user_specs(self) -> list[ArraySpec]:
        return []

    def item_specs(self) -> list[ArraySpec]:
        return []

    def item_pools(self) -> dict:
        """Bounded neighbour-list pools of the item side: name -> most entries a row."""
        return {}

    def reserve(self, users, items, n_events: int) -> None:
        """Before a batch of ``n_events``: room in pools the kernels grow."""

    def derive(self, items, rows) -> None:
        """An owner changed ``rows``: recompute the item arrays derived from the others
        (``ArraySpec.merge == "derived"``)."""

    def log_entries(self, n_events: int) -> int:
        """The most co-occurrence increments a batch of ``n_events`` can log."""
        return 0

    def grow(self, users, items) -> None:
        """A kernel ran out of pool room (``NEED_ROOM``): make more."""
        for pool in items.pools.values():
            pool.reserve(items.arrays, len(items), 2 * len(pool.pj))

    def kernel_state(self, users, items, k: int):
        """The named tuple the model's kernel steps read, over the current arrays of
        ``users`` (a ``UserState``) and ``items`` (an ``ItemState``)."""
        raise NotImplementedError

    def flags(self, etype: np.ndarray, evaluate: bool) -> np.ndarray:
        """Per-event flags: by default every event is learned and, when evaluating, ranked."""
        f = np.full(len(etype), LEARN, dtype=np.int32)
        if evaluate:
            f |= EVALUATE
            if self.rank:
                f |= RANK
        return f

    def value_range(self) -> tuple | None:
        """The ratings this model accepts (others are dead letters), or None."""
        return None

    def hint(self) -> str:
        return "lower the learning rate or raise the regularisation"
