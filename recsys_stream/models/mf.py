"""``mf``: biased matrix factorisation on explicit ratings (see ``kernels.mf``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..events import RATING
from ..kernels import mf as K
from ..kernels.core import EVALUATE, LEARN, RANK
from ..state import GLOBAL, ITEM, USER, ArraySpec
from .base import Model, Params, Prepared


@dataclass(frozen=True)
class MFParams(Params):
    dim: int = 16
    lr: float = 0.1  # factor step size (eta; with adagrad, the base rate)
    reg: float = 0.05  # factor L2 (lambda)
    user_bias_lr_min: float = 0.06  # floor of the user bias step (users drift)
    user_bias_prior: float = 10.0  # c_u: pseudo-ratings shrinking a new user's bias
    item_bias_lr_min: float = 0.0  # floor of the item bias step (0: a shrunk running mean)
    item_bias_prior: float = 5.0  # c_i
    bias_reg: float = 0.05  # lambda_b
    init_std: float = 0.05
    adagrad: bool = True  # row-wise AdaGrad step sizes for the factors
    rating_min: float = 1.0
    rating_max: float = 5.0
    quantized: bool = False  # rank on an int8 copy of the item factors


class MFModel(Model):
    name = "mf"
    predicts_rating = True
    ranks = False

    def specs(self):
        p = self.params
        s = [
            ArraySpec("mf.P", USER, (p.dim,), "float32"),
            ArraySpec("mf.Q", ITEM, (p.dim,), "float32"),
            ArraySpec("mf.bu", USER, (), "float64"),
            ArraySpec("mf.bi", ITEM, (), "float64"),
            ArraySpec("mf.cu", USER, (), "int64"),
            ArraySpec("mf.ci", ITEM, (), "int64"),
            ArraySpec("mf.gu", USER, (), "float64"),
            ArraySpec("mf.gi", ITEM, (), "float64"),
            ArraySpec("mf.glob", GLOBAL, (2,), "float64"),
        ]
        if p.quantized:
            s += [ArraySpec("mf.Q8", ITEM, (p.dim,), "int8"), ArraySpec("mf.qs", ITEM, (), "float32")]
        return s

    def hp(self) -> np.ndarray:
        p = self.params
        hp = np.zeros(K.HP_SIZE)
        hp[K.HP_LR] = p.lr
        hp[K.HP_REG] = p.reg
        hp[K.HP_UBIAS_MIN] = p.user_bias_lr_min
        hp[K.HP_UBIAS_C] = p.user_bias_prior
        hp[K.HP_BIAS_REG] = p.bias_reg
        hp[K.HP_INIT] = p.init_std
        hp[K.HP_ADAGRAD] = 1.0 if p.adagrad else 0.0
        hp[K.HP_LO] = p.rating_min
        hp[K.HP_HI] = p.rating_max
        hp[K.HP_MU0] = 0.5 * (p.rating_min + p.rating_max)
        hp[K.HP_IBIAS_MIN] = p.item_bias_lr_min
        hp[K.HP_IBIAS_C] = p.item_bias_prior
        return hp

    def flags(self, p: Prepared, evaluate: bool) -> np.ndarray:
        is_rating = p.etype == RATING
        f = np.where(is_rating, LEARN, 0).astype(np.int32)
        if evaluate:
            f |= np.where(is_rating, EVALUATE, 0).astype(np.int32)
            if self.rank:
                f |= RANK
        return f

    def run(self, p, F, k, core, out, scores):
        a = self.arrays
        q = self.params.quantized
        Q8 = a["mf.Q8"] if q else np.zeros((1, 1), np.int8)
        qs = a["mf.qs"] if q else np.zeros(1, np.float32)
        return K.mf_batch(
            p.U, p.I, p.V, p.T, F, k, a["mf.P"], a["mf.Q"], a["mf.bu"], a["mf.bi"], a["mf.cu"], a["mf.ci"],
            a["mf.gu"], a["mf.gi"], a["mf.glob"], self.hp(), Q8, qs, q, core, out, scores,
        )
