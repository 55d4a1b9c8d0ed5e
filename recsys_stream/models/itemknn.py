"""``itemknn``: item-to-item co-occurrence CF updated per event (see ``kernels.itemknn``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import itemknn as K
from ..state import ITEM, ITEM2, ArraySpec
from .base import Model, Params


@dataclass(frozen=True)
class ItemKNNParams(Params):
    window: int = 12  # co-occurrences count between items at most this many steps apart
    gamma: float = 0.8  # weight per step of distance in a history
    recent: int = 10  # how many of the user's last items generate candidates
    alpha: float = 0.8  # weight per step back among those
    beta: float = 0.7  # similarity normalisation exponent (0.5: cosine; higher damps popular items)
    pop_weight: float = 0.01  # popularity term (orders items no recent item points to)


def itemknn_specs(prefix: str) -> list[ArraySpec]:
    return [
        ArraySpec(f"{prefix}.C", ITEM2, (), "float32"),
        ArraySpec(f"{prefix}.n", ITEM, (), "float64"),
        ArraySpec(f"{prefix}.inv", ITEM, (), "float64"),  # n^-(1-beta), derived from n
    ]


def itemknn_hp(p: ItemKNNParams) -> np.ndarray:
    hp = np.zeros(K.HP_SIZE)
    hp[K.HP_WINDOW] = p.window
    hp[K.HP_GAMMA] = p.gamma
    hp[K.HP_L] = p.recent
    hp[K.HP_ALPHA] = p.alpha
    hp[K.HP_BETA] = p.beta
    hp[K.HP_POPW] = p.pop_weight
    return hp


class ItemKNNModel(Model):
    name = "itemknn"

    def specs(self):
        return itemknn_specs("knn")

    def run(self, p, F, k, core, out, scores):
        a = self.arrays
        return K.itemknn_batch(p.U, p.I, p.T, F, k, a["knn.C"], a["knn.n"], a["knn.inv"], itemknn_hp(self.params), core, out, scores)
