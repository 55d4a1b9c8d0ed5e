"""``itemknn``: item-to-item co-occurrence CF updated per event (see ``kernels.itemknn``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import scratch
from ..kernels.itemknn import ItemKNNHP, ItemKNNK, recompute_inv
from ..state import ROW, ArraySpec
from .base import Model, Params, pack


@dataclass(frozen=True)
class ItemKNNParams(Params):
    window: int = 12  # co-occurrences count between items at most this many steps apart
    gamma: float = 0.8  # weight per step of distance in a history
    recent: int = 10  # how many of the user's last items generate candidates
    alpha: float = 0.8  # weight per step back among those
    beta: float = 0.7  # similarity normalisation exponent (0.5: cosine; higher damps popular items)
    pop_weight: float = 0.01  # popularity term (orders items no recent item points to)
    neighbors: int = 256  # the most neighbours an item keeps (the heaviest, see kernels.neighbors)
    dense_items: int = 4096  # up to this many item rows, counts in a dense matrix (4096: 64 MiB)

    POSITIVE = ("window", "recent", "neighbors")
    NON_NEGATIVE = ("pop_weight", "dense_items")
    UNIT = ("gamma", "alpha", "beta")


def itemknn_item_specs(prefix: str) -> list[ArraySpec]:
    return [
        ArraySpec(f"{prefix}.n", ROW, (), "float64"),
        ArraySpec(f"{prefix}.inv", ROW, (), "float64", merge="derived"),  # n^-(1-beta), kept with n
    ]


def itemknn_pools(prefix: str, p: ItemKNNParams) -> dict:
    return {prefix: (p.neighbors, p.dense_items)}


def hp_k_max(hp) -> int:
    return 64


def itemknn_state(prefix: str, items, hp: ItemKNNHP, k: int = 10) -> ItemKNNK:
    i = items.arrays
    pool = items.pools[prefix]
    return ItemKNNK(i[f"{prefix}.n"], i[f"{prefix}.inv"], pool.dense, i[f"{prefix}.off"], i[f"{prefix}.nn"],
                    i[f"{prefix}.cap"], pool.pj, pool.pc, pool.used, hp,
                    scratch.array(f"{prefix}.dsc", i.cap if pool.is_dense else 1, np.float64),
                    scratch.array(f"{prefix}.acc", i.cap, np.float64),
                    scratch.array(f"{prefix}.touched", hp.recent * hp.neighbors, np.int32),
                    scratch.array(f"{prefix}.vals", hp.recent * hp.neighbors, np.float64),
                    scratch.array(f"{prefix}.cand", hp.recent * hp.neighbors, np.int32),
                    np.empty(max(k, hp_k_max(hp)), np.float64), pool.lg_i, pool.lg_j, pool.lg_w, pool.lg_n)


class ItemKNNModel(Model):
    name = "itemknn"
    params_type = ItemKNNParams

    def item_specs(self):
        return itemknn_item_specs("knn")

    def item_pools(self):
        return itemknn_pools("knn", self.params)

    def reserve(self, users, items, n_events: int) -> None:
        reserve_pool(items, "knn", self.params, n_events)

    def kernel_state(self, users, items, k):
        return itemknn_state("knn", items, pack(ItemKNNHP, self.params), k)

    def derive(self, items, rows) -> None:
        derive_inv(items, "knn", self.params.beta, rows)

    def log_entries(self, n_events: int) -> int:
        return 2 * self.params.window * n_events


def derive_inv(items, prefix: str, beta: float, rows) -> None:
    a = items.arrays
    recompute_inv(a[f"{prefix}.n"], a[f"{prefix}.inv"], np.ascontiguousarray(rows, dtype=np.int64), beta)


def reserve_pool(items, prefix: str, p, n_events: int) -> None:
    """Room for a batch's neighbour-list growth, most of the time (a kernel that runs out
    asks for more and the batch resumes, see ``kernels.driver``)."""
    pool = items.pools[prefix]
    if not pool.is_dense:
        pool.reserve(items.arrays, len(items), max(n_events * 2 * p.window * 4, (p.window + 2) * p.neighbors))
