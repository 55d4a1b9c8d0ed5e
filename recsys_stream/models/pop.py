"""``pop``: recency-decayed popularity (see ``kernels.popularity``); the baseline and the
fallback list of a user nobody knows yet. Its state is the shard's shared popularity."""

from __future__ import annotations

from dataclasses import dataclass

from ..kernels.baseline import pop_batch
from .base import Model, Params


@dataclass(frozen=True)
class PopParams(Params):
    pass


class PopModel(Model):
    name = "pop"

    def specs(self):
        return []

    def run(self, p, F, k, core, out, scores):
        return pop_batch(p.U, p.I, p.T, F, k, core, out, scores)
