"""``ftrl``: like-probability by FTRL-Proximal logistic regression over hashed features
(see ``kernels.ftrl``). The label is ``rating >= like_threshold`` for ratings, and for
typed events a click, add-to-cart, purchase or like is positive (a view or dislike is not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..events import POSITIVE_TYPES, RATING
from ..features import MAX_ITEM_FEATURES, MAX_USER_FEATURES
from ..kernels import ftrl as K
from ..state import GLOBAL, ITEM, USER, ArraySpec
from .base import Model, Params


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


def like_labels(etype: np.ndarray, value: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(etype == RATING, value >= threshold, np.isin(etype, POSITIVE_TYPES)).astype(np.float64)


def ftrl_hp(alpha: float, beta: float, l1: float, l2: float, crosses: bool = False, normalize: bool = False,
            stats: bool = False, stats_prior: float = 5.0) -> np.ndarray:
    hp = np.zeros(K.HP_SIZE)
    hp[K.HP_ALPHA] = alpha
    hp[K.HP_BETA] = beta
    hp[K.HP_L1] = l1
    hp[K.HP_L2] = l2
    hp[K.HP_CROSSES] = float(crosses)
    hp[K.HP_NORMALIZE] = float(normalize)
    hp[K.HP_STATS] = float(stats)
    hp[K.HP_STATS_PRIOR] = stats_prior
    return hp


def feature_specs() -> list[ArraySpec]:
    return [
        ArraySpec("feat.u", USER, (MAX_USER_FEATURES,), "uint64"),
        ArraySpec("feat.nu", USER, (), "int64"),
        ArraySpec("feat.i", ITEM, (MAX_ITEM_FEATURES,), "uint64"),
        ArraySpec("feat.ni", ITEM, (), "int64"),
    ]


class FTRLModel(Model):
    name = "ftrl"
    predicts_like = True
    ranks = False
    uses_features = True

    def specs(self):
        n = 1 << self.params.bits
        return feature_specs() + [
            ArraySpec("ftrl.z", GLOBAL, (n,), "float64"),
            ArraySpec("ftrl.n", GLOBAL, (n,), "float64"),
            ArraySpec("ftrl.dirty", GLOBAL, ((n >> K.CHUNK_BITS) + 1,), "uint8"),  # chunks of z/n changed
            ArraySpec("ftrl.ulikes", USER, (), "float64"),
            ArraySpec("ftrl.uevents", USER, (), "float64"),
            ArraySpec("ftrl.ilikes", ITEM, (), "float64"),
            ArraySpec("ftrl.ievents", ITEM, (), "float64"),
            ArraySpec("ftrl.glob", GLOBAL, (3,), "float64"),
            ArraySpec("ftrl.udev", USER, (), "float64"),
            ArraySpec("ftrl.ivalues", ITEM, (), "float64"),
        ]

    def run(self, p, F, k, core, out, scores):
        a = self.arrays
        pr = self.params
        return K.ftrl_batch(
            p.U, p.I, p.Y, p.V, p.T, F, k, a["feat.u"], a["feat.nu"], a["feat.i"], a["feat.ni"], p.ctx_ptr, p.ctx_hash,
            a["ftrl.z"], a["ftrl.n"], a["ftrl.dirty"],
            ftrl_hp(pr.alpha, pr.beta, pr.l1, pr.l2, pr.crosses, pr.normalize, pr.stats, pr.stats_prior),
            (a["ftrl.ulikes"], a["ftrl.uevents"], a["ftrl.ilikes"], a["ftrl.ievents"], a["ftrl.glob"], a["ftrl.udev"],
             a["ftrl.ivalues"]), core, out, scores,
        )
