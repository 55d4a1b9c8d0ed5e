"""The contract every online model follows inside a shard.

A model declares its arrays (``specs``), decides per event what to do (``flags``: evaluate,
rank, learn) and runs one Numba kernel over a prepared batch (``run``). It owns no ids and
no I/O: the shard maps ids to rows, grows arrays and turns outputs into metrics and lists.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ..kernels.core import EVALUATE, LEARN, RANK
from ..state import ArraySpec, StateArrays


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


@dataclass
class Prepared:
    """A batch as kernels see it: rows, values, labels and flags per event."""

    U: np.ndarray  # int64 user rows
    I: np.ndarray  # int64 item rows
    V: np.ndarray  # float32 values (ratings / weights)
    Y: np.ndarray  # float64 like-labels (0/1)
    T: np.ndarray  # float64 event times
    etype: np.ndarray  # int8
    ctx_ptr: np.ndarray
    ctx_hash: np.ndarray


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
        except (TypeError, ValueError):
            pass
    raise ValueError(f"parameter {name!r} expects {typ.__name__}, got {value!r}")


@dataclass(frozen=True)
class Params:
    """Base of model hyper-parameters: immutable, with defaults."""

    def replace(self, **changes) -> "Params":
        known = {f.name for f in fields(self)}
        bad = set(changes) - known
        if bad:
            raise ValueError(
                f"unknown parameter(s) {sorted(bad)} for {type(self).__name__}; known: {sorted(known)}"
            )
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in changes.items():
            kw[k] = _coerce(v, type(kw[k]), k)
        return type(self)(**kw)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Model:
    """Base class; subclasses set the class attributes and implement ``specs``/``run``."""

    name = "?"
    predicts_rating = False  # rmse/mae
    predicts_like = False  # logloss/auc
    ranks = True  # ranking metrics by default
    uses_features = False  # needs user/item side-feature rows

    def __init__(self, params: Params, arrays: StateArrays, rank: bool | None = None):
        self.params = params
        self.arrays = arrays
        self.rank = self.ranks if rank is None else rank
        arrays.add(self.specs())

    def specs(self) -> list[ArraySpec]:
        raise NotImplementedError

    def flags(self, p: Prepared, evaluate: bool) -> np.ndarray:
        """Per-event flags: by default every event is learned and, when evaluating, ranked."""
        f = np.full(len(p.U), LEARN, dtype=np.int32)
        if evaluate:
            f |= EVALUATE
            if self.rank:
                f |= RANK
        return f

    def run(self, p: Prepared, F: np.ndarray, k: int, core: tuple, out: tuple, scores: np.ndarray) -> int:
        """Run the model's kernel; -1, or the index of the event after which it diverged."""
        raise NotImplementedError

    def hint(self) -> str:
        return "lower the learning rate or raise the regularisation"
