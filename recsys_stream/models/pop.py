"""``pop``: recency-decayed popularity (see ``kernels.popularity``); the baseline and the
fallback list of a user nobody knows yet. Its state is the item side's popularity."""

from __future__ import annotations

from dataclasses import dataclass

from ..kernels.baseline import PopK
from .base import Model, Params


@dataclass(frozen=True)
class PopParams(Params):
    pass


class PopModel(Model):
    name = "pop"
    params_type = PopParams

    def kernel_state(self, users, items, k):
        return PopK(0)  # no parameters
