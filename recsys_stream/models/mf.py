"""``mf``: biased matrix factorisation on explicit ratings (see ``kernels.mf``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..events import RATING
from ..kernels.layout import EVALUATE, LEARN, RANK
from ..kernels.mf import MFHP, MFK
from ..state import GLOBAL, ROW, ArraySpec
from .base import Model, Params, pack


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

    # the priors are > 0: a new user's (item's) first bias step is 1 / prior
    POSITIVE = ("dim", "lr", "user_bias_prior", "item_bias_prior")
    NON_NEGATIVE = ("reg", "user_bias_lr_min", "item_bias_lr_min", "bias_reg", "init_std")

    def __post_init__(self):
        super().__post_init__()
        if not self.rating_min < self.rating_max:
            raise ValueError(f"rating_min must be below rating_max, got {self.rating_min} and {self.rating_max}")


class MFModel(Model):
    name = "mf"
    predicts_rating = True
    ranks = False
    params_type = MFParams

    def user_specs(self):
        d = self.params.dim
        return [ArraySpec("mf.P", ROW, (d,), "float32"), ArraySpec("mf.bu", ROW, (), "float64"),
                ArraySpec("mf.cu", ROW, (), "int64"), ArraySpec("mf.gu", ROW, (), "float64")]

    def item_specs(self):
        d = self.params.dim
        return [ArraySpec("mf.Q", ROW, (d,), "float32", init_std=self.params.init_std), ArraySpec("mf.bi", ROW, (), "float64"),
                ArraySpec("mf.ci", ROW, (), "int64"), ArraySpec("mf.gi", ROW, (), "float64"),
                ArraySpec("mf.glob", GLOBAL, (2,), "float64"),
                # the int8 copy the ranking reads: derived from mf.Q
                ArraySpec("mf.Q8", ROW, (d if self.params.quantized else 1,), "int8", stored=False),
                ArraySpec("mf.qs", ROW, (), "float32", stored=False)]

    def kernel_state(self, users, items, k):
        u, i = users.arrays, items.arrays
        return MFK(u["mf.P"], u["mf.bu"], u["mf.cu"], u["mf.gu"], i["mf.Q"], i["mf.bi"], i["mf.ci"], i["mf.gi"],
                   i["mf.glob"], i["mf.Q8"], i["mf.qs"], pack(MFHP, self.params), np.zeros(4))

    def value_range(self):
        return (self.params.rating_min, self.params.rating_max)

    def flags(self, etype, evaluate):
        is_rating = etype == RATING
        f = np.where(is_rating, LEARN, 0).astype(np.int32)
        if evaluate:
            f |= np.where(is_rating, EVALUATE, 0).astype(np.int32)
            if self.rank:
                f |= RANK
        return f
