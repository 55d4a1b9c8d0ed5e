"""``hybrid``: implicit + item-to-item + popularity candidates, re-ranked by FTRL over their
scores (see ``kernels.hybrid``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import hybrid as K
from ..state import GLOBAL, ArraySpec
from .base import Model, Params
from .implicit import ImplicitParams, implicit_hp, implicit_specs
from .itemknn import ItemKNNParams, itemknn_hp, itemknn_specs
from .ftrl import ftrl_hp


@dataclass(frozen=True)
class HybridParams(Params):
    dim: int = 32
    lr: float = 0.05
    reg: float = 0.01
    negatives: int = 32  # BPR negatives of the factor part
    window: int = 12
    recent: int = 10
    candidates: int = 50  # from item-to-item CF
    factor_candidates: int = 20  # from the factor model
    pop_candidates: int = 20  # from popularity
    rerank_negatives: int = 8  # non-chosen candidates per event for the re-ranker
    alpha: float = 1.0  # re-ranker FTRL
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 1.0

    def implicit(self) -> ImplicitParams:
        return ImplicitParams(dim=self.dim, lr=self.lr, reg=self.reg, negatives=self.negatives)

    def itemknn(self) -> ItemKNNParams:
        return ItemKNNParams(window=self.window, recent=self.recent)


class HybridModel(Model):
    name = "hybrid"

    def specs(self):
        n = K.N_FEAT * K.N_BUCKETS
        return (
            implicit_specs("imp", self.params.dim, False)
            + itemknn_specs("knn")
            + [ArraySpec("rr.z", GLOBAL, (n,), "float64"), ArraySpec("rr.n", GLOBAL, (n,), "float64")]
        )

    def run(self, p, F, k, core, out, scores):
        a = self.arrays
        pr = self.params
        hhp = np.zeros(K.HP_SIZE)
        hhp[K.HP_NCAND] = pr.candidates
        hhp[K.HP_NNEG] = pr.rerank_negatives
        hhp[K.HP_NCAND_MF] = pr.factor_candidates
        hhp[K.HP_NCAND_POP] = pr.pop_candidates
        s_knn = np.empty_like(scores)
        return K.hybrid_batch(
            p.U, p.I, p.T, F, k, a["imp.P"], a["imp.Q"], a["imp.b"], a["imp.cu"], a["imp.ci"],
            implicit_hp(pr.implicit()), a["knn.C"], a["knn.n"], a["knn.inv"], itemknn_hp(pr.itemknn()),
            a["rr.z"], a["rr.n"], ftrl_hp(pr.alpha, pr.beta, pr.l1, pr.l2), hhp, core, out,
            scores, s_knn, np.zeros((1, 1), np.int8), np.zeros(1, np.float32),
        )
