"""A shard: the keyed state of a group of users, and the prequential step over a batch.

For each event, in order, the model first evaluates (predicts the rating or like
probability, ranks the catalog) with the state as it stands and then learns; lists for
subscribers are computed right after the event that triggers them, from the state as of
that event. All of it happens in one kernel call per batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .events import EventBatch
from .features import FeatureStore, fill_rows
from .kernels.common import mix64
from .kernels.core import RANK, WANT_LIST
from .models import MODELS, ModelDivergedError, Params, Prepared, model_params
from .models.ftrl import like_labels
from .state import GLOBAL, ITEM, USER, ArraySpec, History, IdMap, PairSet, StateArrays

LIST_POLICIES = ("none", "last", "all")


@dataclass(frozen=True)
class ShardSettings:
    """Everything that shapes a shard's state and its per-event work."""

    model: str = "itemknn"
    params: Params = None  # the model's parameters; defaults when None
    k: int = 10
    seed: int = 42
    half_life_days: float = 7.0  # popularity decay; math.inf for plain counts
    recent: int = 32  # length of each user's recent-items ring
    evaluate: bool = True  # prequential metrics (predict / rank before learning)
    rank: bool | None = None  # force ranking metrics on (mf, ftrl) or off; None: model default
    lists: str = "none"  # which events get a fresh list: none, last (per user per batch), all
    watch: frozenset = frozenset()  # users whose last event per batch gets a list even with lists="none"

    def __post_init__(self):
        if self.params is None:
            object.__setattr__(self, "params", model_params(self.model))
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        if not isinstance(self.params, MODELS[self.model][1]):
            raise TypeError(f"params for {self.model!r} must be {MODELS[self.model][1].__name__}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.lists not in LIST_POLICIES:
            raise ValueError(f"lists must be one of {LIST_POLICIES}, got {self.lists!r}")
        if not self.half_life_days > 0:
            raise ValueError(f"half_life_days must be > 0, got {self.half_life_days}")


@dataclass
class ListBatch:
    """Fresh top-k lists, one per triggering event."""

    users: list
    items: list  # list of lists of item ids, best first
    scores: list
    versions: list  # the user's applied-event count at the triggering event
    event_ts: list
    part: list
    offset: list
    seq: list

    def __len__(self):
        return len(self.users)


@dataclass
class ShardResult:
    """What a shard emits for one batch: per-event metric inputs, catalog news, lists."""

    shard: int
    n: int
    seq: np.ndarray  # int64, every event of the batch
    pred: np.ndarray  # float32, NaN where not evaluated
    target: np.ndarray  # float32: the rating (rating models) or the like label (like models)
    pos: np.ndarray  # int16: top-k position of the item, -1 miss, -2 not ranked
    new_items: list  # (item id, seq) for items this shard saw first in this batch
    new_recs: list  # (item id, seq) for items this shard recommended first in this batch
    users: int
    items: int
    lists: ListBatch | None = None
    busy_s: float = 0.0
    kind: dict = field(default_factory=dict)


def core_specs(recent: int) -> list[ArraySpec]:
    return [
        ArraySpec("active", ITEM, (), "uint8", fill=1),
        ArraySpec("pop", ITEM, (), "float64"),
        ArraySpec("pop_meta", GLOBAL, (4,), "float64"),
        ArraySpec("pop.order", ITEM, (), "int32"),  # derived from pop: rebuilt, not stored
        ArraySpec("pop.rank", ITEM, (), "int32"),
        ArraySpec("dims", GLOBAL, (2,), "int64"),
        ArraySpec("uev", USER, (), "int64"),
        ArraySpec("iev", ITEM, (), "int64"),
        ArraySpec("recent", USER, (recent,), "int32", fill=-1),
        ArraySpec("rng", GLOBAL, (1,), "uint64"),
        ArraySpec("hist.off", USER, (), "int64"),
        ArraySpec("hist.len", USER, (), "int64"),
        ArraySpec("hist.cap", USER, (), "int64"),
        # scratch (all zero between kernel calls): the exclusion mask of the ranked user
        ArraySpec("scratch.excl", ITEM, (), "uint8"),
        # evaluation bookkeeping (not model state): first event that recommended an item
        ArraySpec("book.first_rec", ITEM, (), "int64", fill=-1),
    ]


def occurrence(U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each event, how many earlier events of the same user the batch has, and
    whether it is the user's last event in the batch."""
    n = len(U)
    order = np.argsort(U, kind="stable")
    Us = U[order]
    idx = np.arange(n)
    start = np.ones(n, dtype=bool)
    start[1:] = Us[1:] != Us[:-1]
    grp = np.maximum.accumulate(np.where(start, idx, 0))
    occ = np.empty(n, dtype=np.int64)
    occ[order] = idx - grp
    end = np.ones(n, dtype=bool)
    end[:-1] = Us[1:] != Us[:-1]
    last = np.empty(n, dtype=bool)
    last[order] = end
    return occ, last


class Shard:
    """State and logic of one shard (see module docstring)."""

    def __init__(self, index: int, settings: ShardSettings, features: FeatureStore | None = None):
        self.index = index
        self.settings = settings
        self.features = features
        self.users = IdMap()
        self.items = IdMap()
        self.arrays = StateArrays(core_specs(max(settings.recent, 1)))
        self.seen = PairSet()
        self.history = History()
        cls = MODELS[settings.model][0]
        self.model = cls(settings.params, self.arrays, rank=settings.rank)
        a = self.arrays
        hl = settings.half_life_days
        a["pop_meta"][1] = 0.0 if math.isinf(hl) else math.log(2.0) / (hl * 86400.0)
        a["rng"][0] = np.uint64(mix64(np.uint64(settings.seed & 0xFFFFFFFFFFFFFFFF) + np.uint64(index)))
        self._scores = np.zeros(a.cap_items, dtype=np.float64)

    # -- the step -----------------------------------------------------------------

    def process(self, b: EventBatch) -> ShardResult:
        s = self.settings
        k = s.k
        n = len(b)
        U, _ = self.users.rows(b.user)
        I, first_new_item = self.items.rows(b.item)
        n_users_before = int(self.arrays["dims"][0])
        a = self.arrays
        a.ensure(len(self.users), len(self.items))
        self.seen.reserve(n)
        users, counts = np.unique(U, return_counts=True)
        self.history.reserve(users, counts, a)
        if self.model.uses_features:
            self._fill_features(U, I)
        if len(self._scores) < a.cap_items:
            self._scores = np.zeros(a.cap_items, dtype=np.float64)

        labels = like_labels(b.etype, b.value, getattr(s.params, "like_threshold", 4.0))
        p = Prepared(U, I, b.value, labels, b.ts, b.etype, b.ctx_ptr, b.ctx_hash)
        F = self.model.flags(p, s.evaluate)
        want_lists = s.lists != "none" or bool(s.watch)
        if want_lists:
            occ, last = occurrence(U)
            if s.lists == "all":
                F |= WANT_LIST
            elif s.lists == "last":
                F[last] |= WANT_LIST
            else:
                F[last & np.isin(b.user, list(s.watch))] |= WANT_LIST
        out = (
            np.full(n, np.nan, dtype=np.float32),
            np.full(n, -2, dtype=np.int16),
            np.full((n, k), -1, dtype=np.int32),
            np.full((n, k), -1, dtype=np.int32),
            np.zeros((n, k), dtype=np.float32),
        )
        uev_before = a["uev"][U]
        core = self.core()
        t0 = time.perf_counter()
        status = self.model.run(p, F, k, core, out, self._scores)
        busy = time.perf_counter() - t0
        if status >= 0:
            raise ModelDivergedError(s.model, b.user[status], b.item[status], int(b.seq[status]), self.model.hint())
        pred, pos, topk, lst, lst_sc = out

        target = b.value if self.model.predicts_rating else labels.astype(np.float32)
        new_items = []
        if first_new_item < len(self.items):
            # rows >= first_new_item appeared first in this batch; find each one's first event
            rows, first = np.unique(I, return_index=True)
            sel = rows >= first_new_item
            ids = self.items.ids
            new_items = [(ids[r], int(b.seq[e])) for r, e in zip(rows[sel], first[sel])]
        new_recs = self._new_recs(F, topk, b.seq, k)
        lists = None
        if want_lists:
            sel = np.flatnonzero(F & WANT_LIST)
            versions = uev_before[sel] + occ[sel] + 1
            lists = self._lists(sel, b, lst, lst_sc, versions)
        return ShardResult(
            shard=self.index,
            n=n,
            seq=b.seq,
            pred=pred,
            target=target,
            pos=pos,
            new_items=new_items,
            new_recs=new_recs,
            users=len(self.users),
            items=len(self.items),
            lists=lists,
            busy_s=busy,
        )

    # -- helpers --------------------------------------------------------------------

    def core(self) -> tuple:
        """The shared arrays in the order ``kernels.core`` documents."""
        a = self.arrays
        return (self.seen.table, self.seen.count, a["active"], a["pop"], a["pop_meta"], a["dims"], a["uev"],
                a["iev"], a["recent"], a["rng"], a["hist.off"], a["hist.len"], self.history.pool, a["scratch.excl"],
                a["pop.order"], a["pop.rank"])

    def _fill_features(self, U: np.ndarray, I: np.ndarray) -> None:
        a = self.arrays
        nu = a["feat.nu"]
        new_u = np.unique(U[nu[U] == 0])
        if len(new_u):
            fill_rows(self.features, [self.users.ids[r] for r in new_u], new_u, a["feat.u"], nu, "user")
        ni = a["feat.ni"]
        new_i = np.unique(I[ni[I] == 0])
        if len(new_i):
            fill_rows(self.features, [self.items.ids[r] for r in new_i], new_i, a["feat.i"], ni, "item")

    def _new_recs(self, F: np.ndarray, topk: np.ndarray, seq: np.ndarray, k: int) -> list:
        ranked = np.flatnonzero(F & RANK)
        if not len(ranked):
            return []
        flat = topk[ranked].ravel()
        rows, first = np.unique(flat, return_index=True)
        keep = rows >= 0
        rows, first = rows[keep], first[keep]
        fr = self.arrays["book.first_rec"]
        new = fr[rows] < 0
        rows, first = rows[new], first[new]
        ev = ranked[first // k]
        fr[rows] = seq[ev]
        ids = self.items.ids
        return [(ids[r], int(q)) for r, q in zip(rows, seq[ev])]

    def _lists(self, sel, b: EventBatch, lst, lst_sc, versions) -> ListBatch:
        ids = self.items.ids
        items, scores = [], []
        for e in sel:
            row = lst[e]
            m = int(np.count_nonzero(row >= 0))
            items.append([ids[r] for r in row[:m]])
            scores.append([float(x) for x in lst_sc[e, :m]])
        return ListBatch(
            users=list(b.user[sel]),
            items=items,
            scores=scores,
            versions=[int(v) for v in versions],
            event_ts=[float(t) for t in b.ts[sel]],
            part=[int(x) for x in b.part[sel]],
            offset=[int(x) for x in b.offset[sel]],
            seq=[int(x) for x in b.seq[sel]],
        )

