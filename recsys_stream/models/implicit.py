"""``implicit``: positive-only factor model, ISGD and sampled BPR negatives (see ``kernels.implicit``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    quantized: bool = False

    POSITIVE = ("dim", "lr", "neg_tries")
    NON_NEGATIVE = ("reg", "bias_reg", "init_std", "negatives")


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


def implicit_state(prefix: str, users, items, hp: ImplicitHP) -> ImplicitK:
    u, i = users.arrays, items.arrays
    p = prefix
    return ImplicitK(u[f"{p}.P"], u[f"{p}.cu"], i[f"{p}.Q"], i[f"{p}.b"], i[f"{p}.ci"], i[f"{p}.Q8"], i[f"{p}.qs"], hp,
                     np.empty(u[f"{p}.P"].shape[1]))


class ImplicitModel(Model):
    name = "implicit"
    params_type = ImplicitParams

    def user_specs(self):
        return implicit_user_specs("imp", self.params.dim)

    def item_specs(self):
        return implicit_item_specs("imp", self.params.dim, self.params.quantized, self.params.init_std)

    def kernel_state(self, users, items, k):
        return implicit_state("imp", users, items, pack(ImplicitHP, self.params))
