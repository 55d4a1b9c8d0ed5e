"""``ftrl``: like-probability by FTRL-Proximal logistic regression over hashed features
(see ``kernels.ftrl``). The label is ``rating >= like_threshold`` for ratings, and for
typed events a click, add-to-cart, purchase or like is positive (a view or dislike is not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..events import MAX_CONTEXT_FEATURES, POSITIVE_TYPES, RATING
from ..features import MAX_ITEM_FEATURES, MAX_USER_FEATURES
from ..kernels.ftrl import CHUNK_BITS, FTRLHP, FTRLK, row_capacity
from ..state import GLOBAL, ROW, ArraySpec
from .base import Model, Params, pack


@dataclass(frozen=True)
class FTRLParams(Params):
    alpha: float = 1.0
    beta: float = 1.0
    l1: float = 0.01
    l2: float = 0.0
    bits: int = 20  # 2**bits hashed weights
    crosses: bool = True  # user feature x item feature crosses
    normalize: bool = True  # one-hot values 1/sqrt(row size) (unit-norm rows)
    stats: bool = True  # online like-rate and value statistics of the user and item as features
    stats_prior: float = 5.0  # pseudo-events shrinking those statistics towards the global ones
    like_threshold: float = 4.0

    POSITIVE = ("alpha", "stats_prior")
    NON_NEGATIVE = ("beta", "l1", "l2")

    def __post_init__(self):
        super().__post_init__()
        if not 4 <= self.bits <= 28:
            raise ValueError(f"parameter 'bits' must be in 4..28 (2**bits weights), got {self.bits}")


def like_labels(etype: np.ndarray, value: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(etype == RATING, value >= threshold, np.isin(etype, POSITIVE_TYPES)).astype(np.float64)


def ftrl_globals(prefix: str, bits: int) -> list[ArraySpec]:
    n = 1 << bits
    return [ArraySpec(f"{prefix}.z", GLOBAL, (n,), "float64", dirty=f"{prefix}.dirty"),
            ArraySpec(f"{prefix}.n", GLOBAL, (n,), "float64", dirty=f"{prefix}.dirty"),
            # chunks of z/n changed since the last checkpoint
            ArraySpec(f"{prefix}.dirty", GLOBAL, ((n >> CHUNK_BITS) + 1,), "uint8", stored=False)]


class FTRLModel(Model):
    name = "ftrl"
    predicts_like = True
    ranks = False
    uses_features = True
    params_type = FTRLParams

    def user_specs(self):
        return [
            ArraySpec("feat.u", ROW, (MAX_USER_FEATURES,), "uint64"),
            ArraySpec("feat.nu", ROW, (), "int64"),
            ArraySpec("ftrl.ulikes", ROW, (), "float64"),
            ArraySpec("ftrl.uevents", ROW, (), "float64"),
            ArraySpec("ftrl.udev", ROW, (), "float64"),
        ]

    def item_specs(self):
        return ftrl_globals("ftrl", self.params.bits) + [
            # from the feature store, filled by whoever creates the row: not stored, never sent
            ArraySpec("feat.i", ROW, (MAX_ITEM_FEATURES,), "uint64", stored=False),
            ArraySpec("feat.ni", ROW, (), "int64", stored=False),
            ArraySpec("ftrl.ilikes", ROW, (), "float64"),
            ArraySpec("ftrl.ievents", ROW, (), "float64"),
            ArraySpec("ftrl.ivalues", ROW, (), "float64"),
            ArraySpec("ftrl.glob", GLOBAL, (3,), "float64"),
        ]

    def kernel_state(self, users, items, k):
        u, i = users.arrays, items.arrays
        cap = row_capacity(MAX_USER_FEATURES, MAX_ITEM_FEATURES, MAX_CONTEXT_FEATURES)
        return FTRLK(u["feat.u"], u["feat.nu"], u["ftrl.ulikes"], u["ftrl.uevents"], u["ftrl.udev"],
                     i["feat.i"], i["feat.ni"], i["ftrl.ilikes"], i["ftrl.ievents"], i["ftrl.ivalues"],
                     i["ftrl.z"], i["ftrl.n"], i["ftrl.dirty"], i["ftrl.glob"], pack(FTRLHP, self.params),
                     np.empty(cap, np.int64), np.empty(cap), np.empty(cap), np.zeros(2), np.zeros(0, np.uint64))
