"""``implicit``: positive-only factor model, ISGD and sampled BPR negatives (see ``kernels.implicit``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import implicit as K
from ..state import ITEM, USER, ArraySpec
from .base import Model, Params


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


def implicit_specs(prefix: str, dim: int, quantized: bool) -> list[ArraySpec]:
    s = [
        ArraySpec(f"{prefix}.P", USER, (dim,), "float32"),
        ArraySpec(f"{prefix}.Q", ITEM, (dim,), "float32"),
        ArraySpec(f"{prefix}.b", ITEM, (), "float64"),
        ArraySpec(f"{prefix}.cu", USER, (), "int64"),
        ArraySpec(f"{prefix}.ci", ITEM, (), "int64"),
    ]
    if quantized:
        s += [ArraySpec(f"{prefix}.Q8", ITEM, (dim,), "int8"), ArraySpec(f"{prefix}.qs", ITEM, (), "float32")]
    return s


def implicit_hp(p: ImplicitParams) -> np.ndarray:
    hp = np.zeros(K.HP_SIZE)
    hp[K.HP_LR] = p.lr
    hp[K.HP_REG] = p.reg
    hp[K.HP_BREG] = p.bias_reg
    hp[K.HP_INIT] = p.init_std
    hp[K.HP_ISGD] = 1.0 if p.isgd else 0.0
    hp[K.HP_NNEG] = p.negatives
    hp[K.HP_NEG_TRIES] = p.neg_tries
    return hp


class ImplicitModel(Model):
    name = "implicit"

    def specs(self):
        return implicit_specs("imp", self.params.dim, self.params.quantized)

    def run(self, p, F, k, core, out, scores):
        a = self.arrays
        q = self.params.quantized
        Q8 = a["imp.Q8"] if q else np.zeros((1, 1), np.int8)
        qs = a["imp.qs"] if q else np.zeros(1, np.float32)
        return K.implicit_batch(
            p.U, p.I, p.T, F, k, a["imp.P"], a["imp.Q"], a["imp.b"], a["imp.cu"], a["imp.ci"],
            implicit_hp(self.params), Q8, qs, q, core, out, scores,
        )
