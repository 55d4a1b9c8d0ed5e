"""A shard: the keyed state of a group of users, and the prequential step over a batch.

For each event, in order, the model first evaluates (predicts the rating or like
probability, ranks the catalog) with the state as it stands and then learns; lists for
subscribers are computed right after the event that triggers them, from the state as of
that event. All of it happens in one kernel call per batch.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from .events import EventBatch
from .features import FeatureStore, fill_rows
from .kernels.common import mix64
from .kernels.core import PEEK, RANK, WANT_LIST, popular_list
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
    dedupe_window_s: float = 3600.0  # a repeated event id within this much event time is a duplicate
    min_user_events: int = 1  # frequency filter: a user gets state (an embedding) at their Nth event
    ttl_s: float = 0.0  # >0: users idle this long (event time) leave memory after a checkpoint stored them

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
        if self.min_user_events < 1:
            raise ValueError(f"min_user_events must be >= 1, got {self.min_user_events}")


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
    lists: list | None = None  # list records (dicts) computed for this batch, in event order
    duplicates: int = 0
    filtered: int = 0  # events of users not admitted yet (frequency filter)
    busy_s: float = 0.0


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
        # rows changed since the last checkpoint
        ArraySpec("dirty.u", USER, (), "uint8"),
        ArraySpec("dirty.i", ITEM, (), "uint8"),
        ArraySpec("last_ts", USER, (), "float64"),  # the user's latest event time (expiry)
        # evaluation bookkeeping (not model state): first event that recommended an item
        ArraySpec("book.first_rec", ITEM, (), "int64", fill=-1),
    ]


def occurrence(U: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each event: how many earlier events of the same user the batch has, whether it
    is the user's first and whether it is the user's last event in the batch."""
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
    return occ, occ == 0, last


class Shard:
    """State and logic of one shard (see module docstring)."""

    def __init__(self, index: int, settings: ShardSettings, features: FeatureStore | None = None):
        self.index = index
        self.settings = settings
        self.features = features
        self.checkpointer = None  # set when the shard is backed by a checkpoint store
        self.reset()

    def reset(self) -> None:
        """Empty state (a new shard, or before restoring an older generation)."""
        settings = self.settings
        index = self.index
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
        # event ids seen within the de-duplication window (they decide which events are applied)
        self.recent_ids: dict = {}
        self.id_queue: deque = deque()
        self.admission: dict = {}  # user -> events so far, for users below min_user_events
        self.n_users_total = 0  # distinct users this shard has met (in memory or stored)
        # source partition -> highest sequence number (offset) applied: what a replay after a
        # restore skips, so no event is applied twice whatever position the source resumes at
        self.applied: dict[int, int] = {}
        self.resumed_from: dict[int, int] | None = None  # applied positions at a restore (gap check)

    # -- the step -----------------------------------------------------------------

    def process(self, b: EventBatch, want: np.ndarray | None = None) -> ShardResult:
        """Evaluate-then-learn every event of ``b`` in order. Lists are computed for the
        events ``want`` marks (default: per ``settings.lists`` and ``settings.watch``)."""
        s = self.settings
        k = s.k
        n = len(b)
        created = self.users.created
        U, _ = self.users.rows(b.user)
        self.n_users_total += self.users.created - created
        I, first_new_item = self.items.rows(b.item)
        a = self.arrays
        a.ensure(len(self.users), len(self.items))
        a["last_ts"][U] = b.ts  # the last write per user is their latest event
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
        if want is None and (s.lists != "none" or s.watch):
            _occ, _first, last = occurrence(U)
            if s.lists == "all":
                want = np.ones(n, dtype=bool)
            elif s.lists == "last":
                want = last
            else:
                want = last & np.isin(b.user, list(s.watch))
        if want is not None:
            F[want] |= WANT_LIST
        out = (
            np.full(n, np.nan, dtype=np.float32),
            np.full(n, -2, dtype=np.int16),
            np.full((n, k), -1, dtype=np.int32),
            np.full((n, k), -1, dtype=np.int32),
            np.zeros((n, k), dtype=np.float32),
        )
        uev_before = a["uev"][U]
        t0 = time.perf_counter()
        status = self.model.run(p, F, k, self.core(), out, self._scores)
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
        new_recs = self._new_recs(F, topk, b.seq, k) if s.evaluate else []
        for part in np.unique(b.part):
            top = int(b.seq[b.part == part].max())
            if top > self.applied.get(int(part), -1):
                self.applied[int(part)] = top
        lists = None
        if want is not None:
            sel = np.flatnonzero(want)
            occ = occurrence(U)[0]
            lists = self._records(sel, b, lst, lst_sc, uev_before[sel] + occ[sel] + 1)
        return ShardResult(
            shard=self.index,
            n=n,
            seq=b.seq,
            pred=pred,
            target=target,
            pos=pos,
            new_items=new_items,
            new_recs=new_recs,
            users=self.n_users_total,
            items=len(self.items),
            lists=lists,
            busy_s=busy,
        )

    def admit(self, b: EventBatch) -> tuple[EventBatch, int]:
        """Before ``process``: bring back stored users of the batch that are not in memory,
        and hold back the events of users below ``min_user_events`` (they are counted; the
        user gets state at their Nth event). Returns the events to process and how many
        were held back."""
        index = self.users.index
        unknown = list(dict.fromkeys(u for u in b.user if u not in index))
        if not unknown:
            return b, 0
        if self.checkpointer is not None:
            stored = self.checkpointer.fetch_users(unknown)
            for ext, payload in stored.items():
                self.checkpointer.load_user(ext, payload)
            unknown = [u for u in unknown if u not in stored]
        need = self.settings.min_user_events
        if need <= 1 or not unknown:
            return b, 0
        fresh = set(unknown)
        keep = np.ones(len(b), dtype=bool)
        counts = self.admission
        for e, u in enumerate(b.user):
            if u in fresh:
                c = counts.get(u, 0) + 1
                if c < need:
                    counts[u] = c
                    keep[e] = False
                    if len(counts) > 1_000_000:  # bounded: the oldest counts are forgotten
                        counts.pop(next(iter(counts)))
                else:
                    counts.pop(u, None)
                    fresh.discard(u)  # admitted: this event and the next ones are learned
        held = int(len(b) - keep.sum())
        return (b if held == 0 else b.take(np.flatnonzero(keep))), held

    def skip_applied(self, b: EventBatch) -> tuple[EventBatch, EventBatch | None]:
        """Split off events this shard has applied already (a source replaying after a
        restore); returns (new events, replayed events or None)."""
        if not self.applied:
            return b, None
        done = np.zeros(len(b), dtype=bool)
        for part, top in self.applied.items():
            done |= (b.part == part) & (b.seq <= top)
        if not done.any():
            return b, None
        return b.take(np.flatnonzero(~done)), b.take(np.flatnonzero(done))

    def emission_state(self) -> dict:
        """The bookkeeping a checkpoint keeps besides the model arrays: applied source
        positions, de-duplication ids and admission counts (they decide which events are
        applied)."""
        return {"applied": {str(p): q for p, q in self.applied.items()},
                "ids": [[t, e] for t, e in self.id_queue], "admission": self.admission}

    def restore_emission(self, state: dict) -> None:
        self.applied = {int(p): int(q) for p, q in state.get("applied", {}).items()}
        self.resumed_from = dict(self.applied)
        self.id_queue = deque((float(t), e) for t, e in state.get("ids", []))
        self.recent_ids = {e: t for t, e in self.id_queue}
        self.admission = dict(state.get("admission", {}))

    def recommend(self, user: str) -> dict:
        """The user's current list, read only (an unknown user gets the popularity list)."""
        a = self.arrays
        k = self.settings.k
        row = self.users.get(user)
        if row < 0 and self.checkpointer is not None:
            found = self.checkpointer.fetch_users([user])
            if user in found:
                row = self.checkpointer.load_user(user, found[user])
        if row < 0 or len(self.items) == 0:
            idx = np.full(k, -1, dtype=np.int32)
            sc = np.zeros(k)
            c = popular_list(self.core(), k, idx, sc) if len(self.items) else 0
            return {"user": user, "items": [self.items.ids[r] for r in idx[:c]], "scores": sc[:c].tolist(),
                    "version": 0, "known": False}
        one = np.zeros(1)
        p = Prepared(np.array([row]), np.zeros(1, np.int64), one.astype(np.float32), one, a["last_ts"][[row]],
                     np.zeros(1, np.int8), np.zeros(2, np.int64), np.zeros(0, np.uint64))
        out = (np.full(1, np.nan, np.float32), np.full(1, -2, np.int16), np.full((1, k), -1, np.int32),
               np.full((1, k), -1, np.int32), np.zeros((1, k), np.float32))
        if len(self._scores) < a.cap_items:
            self._scores = np.zeros(a.cap_items)
        self.model.run(p, np.array([WANT_LIST | PEEK], np.int32), k, self.core(), out, self._scores)
        lst, sc = out[3][0], out[4][0]
        m = int(np.count_nonzero(lst >= 0))
        return {"user": user, "items": [self.items.ids[r] for r in lst[:m]], "scores": sc[:m].tolist(),
                "version": int(a["uev"][row]), "known": True}

    def drop_duplicates(self, b: EventBatch) -> tuple[EventBatch, int]:
        """Remove events whose id was seen within the window (event time) before, or
        earlier in this batch; returns the rest and how many were dropped."""
        if b.eid is None:
            return b, 0
        window = self.settings.dedupe_window_s
        seen = self.recent_ids
        q = self.id_queue
        keep = np.ones(len(b), dtype=bool)
        newest = max(float(b.ts.max()), q[-1][0] if q else -np.inf)
        for e, (eid, t) in enumerate(zip(b.eid, b.ts)):
            if eid is None:
                continue
            if eid in seen:
                keep[e] = False
                continue
            seen[eid] = t
            q.append((float(t), eid))
        while q and q[0][0] < newest - window:
            _t, old = q.popleft()
            seen.pop(old, None)
        dropped = int(len(b) - keep.sum())
        return (b if dropped == 0 else b.take(np.flatnonzero(keep))), dropped

    def catalog(self, ops: list[tuple[str, str]]) -> None:
        """Apply catalog operations in order: ``add`` makes an item recommendable (a new
        item enters the catalog with no history), ``retire`` makes it never recommended
        again (until added back)."""
        a = self.arrays
        for item, op in ops:
            row = self.items.add(item)
            if row >= int(a["dims"][1]):
                a.ensure(len(self.users), len(self.items))
                dims = a["dims"]
                for r in range(int(dims[1]), row + 1):
                    a["pop.order"][r] = r
                    a["pop.rank"][r] = r
                dims[1] = row + 1
                if self.model.uses_features:
                    fill_rows(self.features, [item], np.array([row]), a["feat.i"], a["feat.ni"], "item")
            a["active"][row] = 1 if op == "add" else 0
            a["dirty.i"][row] = 1

    # -- helpers --------------------------------------------------------------------

    def core(self) -> tuple:
        """The shared arrays in the order ``kernels.core`` documents."""
        a = self.arrays
        return (self.seen.table, self.seen.count, a["active"], a["pop"], a["pop_meta"], a["dims"], a["uev"],
                a["iev"], a["recent"], a["rng"], a["hist.off"], a["hist.len"], self.history.pool, a["scratch.excl"],
                a["pop.order"], a["pop.rank"], a["dirty.u"], a["dirty.i"])

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

    def _records(self, sel, b: EventBatch, lst, lst_sc, versions) -> list:
        """The list records (the recommendations topic's values) of events ``sel``."""
        ids = self.items.ids
        model = self.settings.model
        out = []
        for j, e in enumerate(sel):
            row = lst[e]
            m = int(np.count_nonzero(row >= 0))
            rec = {
                "user": b.user[e],
                "items": [ids[r] for r in row[:m]],
                "scores": [float(x) for x in lst_sc[e, :m]],
                "model": model,
                "version": int(versions[j]),
                "event_ts": float(b.ts[e]),
                "trigger": {"partition": int(b.part[e]), "offset": int(b.offset[e])},
            }
            if b.ingest is not None:
                rec["_ingest_ts"] = float(b.ingest[e])
            out.append(rec)
        return out
