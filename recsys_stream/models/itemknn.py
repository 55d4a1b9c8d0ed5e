"""``itemknn``: item-to-item co-occurrence CF updated per event (see ``kernels.itemknn``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..kernels.itemknn import ItemKNNHP, ItemKNNK
from ..state import ROW, SQUARE, ArraySpec
from .base import Model, Params, pack


@dataclass(frozen=True)
class ItemKNNParams(Params):
    window: int = 12  # co-occurrences count between items at most this many steps apart
    gamma: float = 0.8  # weight per step of distance in a history
    recent: int = 10  # how many of the user's last items generate candidates
    alpha: float = 0.8  # weight per step back among those
    beta: float = 0.7  # similarity normalisation exponent (0.5: cosine; higher damps popular items)
    pop_weight: float = 0.01  # popularity term (orders items no recent item points to)

    POSITIVE = ("window", "recent")
    NON_NEGATIVE = ("pop_weight",)
    UNIT = ("gamma", "alpha", "beta")


def itemknn_item_specs(prefix: str) -> list[ArraySpec]:
    return [
        ArraySpec(f"{prefix}.C", SQUARE, (), "float32"),
        ArraySpec(f"{prefix}.n", ROW, (), "float64"),
        ArraySpec(f"{prefix}.inv", ROW, (), "float64"),  # n^-(1-beta), kept with n
    ]


def itemknn_state(prefix: str, items, hp: ItemKNNHP) -> ItemKNNK:
    i = items.arrays
    return ItemKNNK(i[f"{prefix}.C"], i[f"{prefix}.n"], i[f"{prefix}.inv"], hp)


class ItemKNNModel(Model):
    name = "itemknn"
    params_type = ItemKNNParams

    def item_specs(self):
        return itemknn_item_specs("knn")

    def kernel_state(self, users, items, k):
        return itemknn_state("knn", items, pack(ItemKNNHP, self.params))
