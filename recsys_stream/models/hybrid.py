"""``hybrid``: implicit + item-to-item + popularity candidates, re-ranked by FTRL over their
scores (see ``kernels.hybrid``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import scratch
from ..kernels import hybrid as K
from ..kernels.ftrl import FTRLHP
from ..kernels.implicit import ImplicitHP
from ..kernels.itemknn import ItemKNNHP
from ..state import GLOBAL, ArraySpec
from .base import Model, Params, pack
from .implicit import (FactorRetrieval, ImplicitParams, check_ann, implicit_item_specs, implicit_state,
                       implicit_user_specs)
from .itemknn import ItemKNNParams, derive_inv, itemknn_item_specs, itemknn_pools, itemknn_state, reserve_pool
from .ftrl import FTRLParams


@dataclass(frozen=True)
class HybridParams(Params):
    dim: int = 32
    lr: float = 0.05
    reg: float = 0.01
    negatives: int = 32  # BPR negatives of the factor part
    window: int = 12
    recent: int = 10
    neighbors: int = 256  # the most neighbours an item keeps (item-to-item part)
    dense_items: int = 4096  # up to this many items, item-to-item counts in a dense matrix
    candidates: int = 50  # from item-to-item CF
    factor_candidates: int = 20  # from the factor model
    pop_candidates: int = 20  # from popularity
    rerank_negatives: int = 8  # non-chosen candidates per event for the re-ranker
    head_negatives: float = 0.0  # the factor part's negatives from the popularity head (``ImplicitParams``;
    # 0: the hybrid has a popularity source of its own, and 0.5 cost 0.9 % of HR@10 on a 10^6-item stream)
    item_decay: float = 1000.0  # the factor part's item step decay (``ImplicitParams``)
    alpha: float = 1.0  # re-ranker FTRL
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 1.0
    ann: str = "auto"  # the factor source's retrieval index (``ImplicitParams``)
    ann_min_items: int = 20_000
    ann_recall: float = 0.99
    ann_lag: int = 8

    POSITIVE = ("dim", "lr", "window", "recent", "neighbors", "alpha", "ann_lag")
    NON_NEGATIVE = ("dense_items", "reg", "negatives", "candidates", "factor_candidates", "pop_candidates", "rerank_negatives",
                    "beta", "l1", "l2", "ann_min_items", "item_decay")
    UNIT = ("ann_recall", "head_negatives")

    def __post_init__(self):
        super().__post_init__()
        check_ann(self.ann)

    def implicit(self) -> ImplicitParams:
        return ImplicitParams(dim=self.dim, lr=self.lr, reg=self.reg, negatives=self.negatives,
                              head_negatives=self.head_negatives, item_decay=self.item_decay, ann=self.ann,
                              ann_min_items=self.ann_min_items, ann_recall=self.ann_recall, ann_lag=self.ann_lag)

    def itemknn(self) -> ItemKNNParams:
        return ItemKNNParams(window=self.window, recent=self.recent, neighbors=self.neighbors,
                             dense_items=self.dense_items)

    def reranker(self) -> FTRLParams:
        return FTRLParams(alpha=self.alpha, beta=self.beta, l1=self.l1, l2=self.l2)


class HybridModel(FactorRetrieval, Model):
    name = "hybrid"
    params_type = HybridParams
    reason_sources = True

    def user_specs(self):
        return implicit_user_specs("imp", self.params.dim)

    def item_specs(self):
        n = K.N_FEAT * K.N_BUCKETS
        return (implicit_item_specs("imp", self.params.dim, False, self.params.implicit().init_std)
                + itemknn_item_specs("knn")
                + [ArraySpec("rr.z", GLOBAL, (n,), "float64"), ArraySpec("rr.n", GLOBAL, (n,), "float64")])

    def item_pools(self):
        return itemknn_pools("knn", self.params.itemknn())

    def factor_params(self):
        return self.params.implicit()

    def reserve(self, users, items, n_events: int) -> None:
        reserve_pool(items, "knn", self.params.itemknn(), n_events)

    def derive(self, items, rows) -> None:
        derive_inv(items, "knn", self.params.itemknn().beta, rows)
        self.derive_index(items, rows)

    def log_entries(self, n_events: int) -> int:
        return 2 * self.params.window * n_events

    def kernel_state(self, users, items, k):
        p = self.params
        cap = items.arrays.cap
        n_cand = max(p.candidates, p.factor_candidates, p.pop_candidates, 1)
        i = items.arrays
        return K.HybridK(
            implicit_state("imp", users, items, pack(ImplicitHP, p.implicit()), self.index_state(users, items)),
            itemknn_state("knn", items, pack(ItemKNNHP, p.itemknn()), k),
            i["rr.z"], i["rr.n"], pack(FTRLHP, p.reranker()), pack(K.HybridHP, p),
            scratch.array("hybrid.rank_mf", cap, np.int32, -1), scratch.array("hybrid.rank_knn", cap, np.int32, -1),
            scratch.array("hybrid.rank_pop", cap, np.int32, -1),
            np.empty(3 * n_cand, np.int64), np.empty(3 * n_cand), np.empty(n_cand, np.int32), np.empty(n_cand),
            np.empty(K.N_FEAT, np.int64), np.empty(K.N_FEAT), np.empty(K.N_FEAT),
            np.zeros(1, np.uint8),  # dirty chunks of rr_z/rr_n: the re-ranker is stored whole
            np.zeros(6),
        )
