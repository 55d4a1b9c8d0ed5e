"""``implicit``: positive-only factor model, ISGD and sampled BPR negatives (see ``kernels.implicit``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..factorindex import ANN_MODES, FactorIndex
from ..kernels.implicit import ImplicitHP, ImplicitK
from ..state import ROW, ArraySpec
from .base import Model, Params, pack


@dataclass(frozen=True)
class ImplicitParams(Params):
    dim: int = 32
    lr: float = 0.05
    reg: float = 0.01
    bias_reg: float = 0.01
    init_std: float = 0.1
    isgd: bool = False  # add the ISGD positive step (target 1) of Vinagre et al.
    negatives: int = 32  # sampled BPR negatives per event
    neg_tries: int = 4  # draws per negative before giving up (catalog nearly exhausted)
    # share of negatives drawn from the popularity head on catalogs larger than it
    head_negatives: float = 0.5
    # an item row's pair steps scaled by sqrt(item_decay / (item_decay + its updates)); 0: constant
    item_decay: float = 1000.0
    quantized: bool = False
    # retrieval (``factorindex.FactorIndex``): "auto" ranks with the index from ann_min_items
    # items on, "on" always, "off" never; the probe count is tuned for ann_recall; a
    # negative's copy in the index is re-copied every ann_lag-th update of its row
    ann: str = "auto"
    ann_min_items: int = 20_000
    ann_recall: float = 0.99
    ann_lag: int = 8

    POSITIVE = ("dim", "lr", "neg_tries", "ann_lag")
    NON_NEGATIVE = ("reg", "bias_reg", "init_std", "negatives", "ann_min_items", "item_decay")
    UNIT = ("ann_recall", "head_negatives")

    def __post_init__(self):
        super().__post_init__()
        check_ann(self.ann)


def check_ann(mode: str) -> None:
    if mode not in ANN_MODES:
        raise ValueError(f"parameter 'ann' must be one of {', '.join(ANN_MODES)}, got {mode!r}")


def factor_index(items, prefix: str, p) -> FactorIndex:
    """The retrieval index of the factor rows ``prefix`` on this item side, for params ``p``
    (``dim``, ``ann``, ``ann_min_items``, ``ann_recall``, ``ann_lag``)."""
    return FactorIndex.of(items, prefix, p.dim, mode=p.ann, min_items=p.ann_min_items, recall=p.ann_recall,
                          lag=p.ann_lag, seed=int(items.arrays["seed"][0]) & 0x7FFFFFFF)


def implicit_user_specs(prefix: str, dim: int) -> list[ArraySpec]:
    return [ArraySpec(f"{prefix}.P", ROW, (dim,), "float32"), ArraySpec(f"{prefix}.cu", ROW, (), "int64")]


def implicit_item_specs(prefix: str, dim: int, quantized: bool, init_std: float) -> list[ArraySpec]:
    return [
        ArraySpec(f"{prefix}.Q", ROW, (dim,), "float32", init_std=init_std),
        ArraySpec(f"{prefix}.b", ROW, (), "float64"),
        ArraySpec(f"{prefix}.ci", ROW, (), "int64"),
        # the int8 copy the ranking reads: derived from Q
        ArraySpec(f"{prefix}.Q8", ROW, (dim if quantized else 1,), "int8", stored=False),
        ArraySpec(f"{prefix}.qs", ROW, (), "float32", stored=False),
    ]


def implicit_state(prefix: str, users, items, hp: ImplicitHP, ann) -> ImplicitK:
    u, i = users.arrays, items.arrays
    p = prefix
    return ImplicitK(u[f"{p}.P"], u[f"{p}.cu"], i[f"{p}.Q"], i[f"{p}.b"], i[f"{p}.ci"], i[f"{p}.Q8"], i[f"{p}.qs"], hp,
                     np.empty(u[f"{p}.P"].shape[1]), ann)


class FactorRetrieval:
    """What a model ranking by the factor rows "imp" adds to ``Model``: its retrieval index
    (``factorindex.FactorIndex``), built and grown when its kernels ask. ``factor_params`` gives
    the params (``dim``, ``negatives``, ``ann*``)."""

    def factor_params(self):
        return self.params

    def _index(self, items) -> FactorIndex:
        return factor_index(items, "imp", self.factor_params())

    def index_state(self, users, items):
        return self._index(items).kernel(items, self.factor_params().negatives + 1)

    def grow(self, users, items) -> None:
        """A kernel stopped for room: the index's, if it is the index that is not ready
        (the next stop, if any, is the pools'), else the pools' (``Model.grow``)."""
        fi = self._index(items)
        per_event = self.factor_params().negatives + 1
        if not fi.ready(items, per_event):
            fi.grow(items, users, per_event)
        else:
            super().grow(users, items)

    def derive_index(self, items, rows) -> None:
        fi = items.derived.get("ann.imp")
        if fi is not None:
            fi.changed(items, rows)


class ImplicitModel(FactorRetrieval, Model):
    name = "implicit"
    params_type = ImplicitParams

    def user_specs(self):
        return implicit_user_specs("imp", self.params.dim)

    def item_specs(self):
        return implicit_item_specs("imp", self.params.dim, self.params.quantized, self.params.init_std)

    def derive(self, items, rows) -> None:
        self.derive_index(items, rows)

    def kernel_state(self, users, items, k):
        return implicit_state("imp", users, items, pack(ImplicitHP, self.params), self.index_state(users, items))
