"""A shard: the users of one key group, and the prequential step over a batch.

For each event, in order, the model first evaluates (predicts the rating or like
probability, ranks the catalog) with the state as it stands and then learns; lists for
subscribers are computed right after the event that triggers them, from the state as of
that event. All of it happens in one kernel call per batch (``kernels.driver``).

A shard owns its ``UserState``; it reads and updates the item side through an
``ItemState`` it is given (its own by default). The shard decides whose events are
applied and which (key groups, event filters, the admission of stored and new users) and
keeps the step's bookkeeping; the kernel call and the read path are ``kernelcall``'s, the
side-feature rows ``features``' and the list records ``records``'.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from .config import RunConfig as _D
from .eventfilter import EventFilter
from .events import EventBatch
from .features import FeatureStore, fill_item_rows, fill_user_rows
from .kernelcall import Events, Outputs, first_recs, outputs, read, run
from .kernels.layout import EXPLAIN, WANT_LIST
from .models import MODELS, ModelDivergedError, Params, model_params
from .models.ftrl import like_labels
from .records import list_records, reasons
from .state import ItemState, UserState

LIST_POLICIES = ("none", "last", "all")


@dataclass(frozen=True)
class ShardSettings:
    """Everything that shapes a shard's state and its per-event work (defaults: ``config``)."""

    model: str = _D.model
    params: Params = None  # the model's parameters; defaults when None
    k: int = _D.k
    seed: int = _D.seed
    half_life_days: float = _D.half_life_days  # popularity decay; math.inf for plain counts
    recent: int = 32  # length of each user's recent-items ring
    evaluate: bool = True  # prequential metrics (predict / rank before learning)
    rank: bool | None = None  # force ranking metrics on (mf, ftrl) or off; None: model default
    lists: str = "none"  # which events get a fresh list: none, last (per user per batch), all
    watch: frozenset = frozenset()  # users whose last event per batch gets a list even with lists="none"
    dedupe_window_s: float = _D.dedupe_window_s  # a repeated event id within this much event time is a duplicate
    min_user_events: int = _D.min_user_events  # frequency filter: a user gets state at their Nth event
    ttl_s: float = _D.ttl_s  # >0: users idle this long (event time) leave memory after a checkpoint stored them
    reasons: bool = False  # list records carry reasons (``kernels.explain``, ``records``)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        if self.params is None:
            object.__setattr__(self, "params", model_params(self.model))
        if not isinstance(self.params, MODELS[self.model].params_type):
            raise TypeError(f"params for {self.model!r} must be {MODELS[self.model].params_type.__name__}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.lists not in LIST_POLICIES:
            raise ValueError(f"lists must be one of {LIST_POLICIES}, got {self.lists!r}")
        if not self.half_life_days > 0:
            raise ValueError(f"half_life_days must be > 0, got {self.half_life_days}")
        if self.min_user_events < 1:
            raise ValueError(f"min_user_events must be >= 1, got {self.min_user_events}")
        if self.recent < 1:
            raise ValueError(f"recent must be >= 1, got {self.recent}")

    def make_model(self):
        return MODELS[self.model](self.params, rank=self.rank)


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
    staleness: np.ndarray | None = None  # seconds since each bucket's values last reached the replica

    @classmethod
    def empty(cls, shard: int, lists: list | None = None, users: int = 0, items: int = 0) -> "ShardResult":
        z = np.zeros(0)
        return cls(shard=shard, n=0, seq=z.astype(np.int64), pred=z.astype(np.float32), target=z.astype(np.float32),
                   pos=z.astype(np.int16), new_items=[], new_recs=[], users=users, items=items, lists=lists or [])


def occurrence(U: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each event: how many earlier events of the same user the batch has, whether it
    is the user's first and whether it is the user's last event in the batch:

    >>> occ, first, last = occurrence(np.array([3, 1, 3, 3, 1]))
    >>> occ.tolist(), first.tolist(), last.tolist()
    ([0, 0, 1, 2, 1], [True, True, False, False, False], [False, False, False, True, True])
    """
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


@dataclass
class Group:
    """What a key group keeps besides its users' rows: which events it applied, its users
    count, its refresh policy's state, and where it is checkpointed."""

    index: int
    filter: EventFilter
    total: int = 0  # distinct users of the group met (in memory or stored)
    policy: object = None  # refresh.RefreshPolicy of the job, or None
    checkpointer: object = None  # checkpoint.Checkpointer of the group's part


def group_runs(G: np.ndarray):
    """(group, indices of its events in order) per group of ``G``: one stable sort."""
    if len(G) and (G == G[0]).all():
        yield int(G[0]), np.arange(len(G))
        return
    order = np.argsort(G, kind="stable")
    sg = G[order]
    cuts = np.flatnonzero(np.diff(sg)) + 1
    for lo, hi in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(sg)]))):
        yield int(sg[lo]), order[lo:hi]


class Shard:
    """The users of one or more key groups and the prequential step over their events
    (see module docstring).

    A shard made for one key group (``groups=None``) holds the users of group ``index``.
    A worker's shard (``groups=n``, the job's number of key groups) holds the users of
    every group the worker owns in one ``UserState``, each user's row tagged with its
    group: the kernel then runs once per batch over the worker's events in their order,
    so the result does not depend on how many key groups there are, and each group is
    still checkpointed (and moves at a rescale) on its own (``Group``)."""

    def __init__(self, index: int, settings: ShardSettings, features: FeatureStore | None = None,
                 items: ItemState | None = None, groups: int | None = None):
        self.index = index
        self.settings = settings
        self.features = features
        self.model = settings.make_model()
        self.own_items = items is None
        self._items = items
        self.router = None
        self.new_policy = None  # makes a new group's refresh policy (the flow's), if any
        if groups is not None:
            from .routing import UserRouter

            self.router = UserRouter(groups)
        self.reset()

    def reset(self) -> None:
        """Empty state (a new shard, or before restoring an older generation)."""
        s = self.settings
        self.users = UserState(self.model.user_specs(), s.recent, s.seed)
        if self.own_items:
            self.items = ItemState(self.model.item_specs(), s.half_life_days, s.seed, self.model.item_pools())
        else:
            self.items = self._items
        self._item_features = 0  # item rows below this have their feature rows (models with features)
        old = getattr(self, "groups", {})
        self.groups: dict[int, Group] = {}
        for g, grp in old.items():  # a reset keeps the groups' checkpointers and policies
            self.group(g).checkpointer = grp.checkpointer
            self.groups[g].policy = grp.policy
        self.group(self.index)

    def group(self, g: int) -> Group:
        grp = self.groups.get(g)
        if grp is None:
            s = self.settings
            grp = self.groups[g] = Group(g, EventFilter(s.dedupe_window_s, s.min_user_events))
            if self.new_policy is not None:
                grp.policy = self.new_policy()
        return grp

    @property
    def filter(self) -> EventFilter:
        """The event filter of the shard's own group (a shard of one group)."""
        return self.group(self.index).filter

    @property
    def checkpointer(self):
        return self.group(self.index).checkpointer

    @checkpointer.setter
    def checkpointer(self, ck) -> None:
        self.group(self.index).checkpointer = ck

    def groups_of(self, users: np.ndarray) -> np.ndarray:
        """The key group of each user."""
        if self.router is None:
            return np.full(len(users), self.index, dtype=np.int32)
        return self.router.shards(users).astype(np.int32)

    def group_of(self, user: str) -> int:
        return self.index if self.router is None else self.router.shard_of(user)

    def total_users(self) -> int:
        return sum(g.total for g in self.groups.values())

    def drop_group(self, g: int) -> None:
        """Forget the users of group ``g`` held in memory (before restoring it again)."""
        n = len(self.users)
        a = self.users.arrays
        live = np.fromiter((x is not None for x in self.users.ids.ids), dtype=bool, count=n)
        rows = np.flatnonzero(live & (a["group"][:n] == g))
        a["dirty"][rows] = 0
        self.users.evict(rows)

    def meta(self) -> dict:
        """The settings a checkpoint of this shard records and checks on restore."""
        s = self.settings
        return {"model": s.model, "params": s.params.as_dict(), "seed": s.seed, "recent": s.recent,
                "half_life_days": s.half_life_days if s.half_life_days != float("inf") else "inf"}

    # -- before the step: which events are applied ----------------------------------

    def select(self, b: EventBatch, G: np.ndarray | None = None):
        """Split off what the key groups' filters say is not to be applied: events applied
        before a restore (replayed), duplicates, events of users not admitted yet.
        Returns (events to apply, their groups, replayed events or None, duplicates, held
        back). A group's applied positions cannot tell a gap in the input: a partition
        carries many groups' events, so a group's next event may legitimately lie far past
        its last one; that the input resumes where the state stands is Bytewax's committed
        offsets' job, and the preflight checks that the store holds what they name."""
        if G is None:
            G = self.groups_of(b.user)
        keep = np.ones(len(b), dtype=bool)
        replayed = np.zeros(len(b), dtype=bool)
        for g, idx in group_runs(G):
            f = self.group(g).filter
            sub = b if len(idx) == len(b) else b.take(idx)
            done = f.applied_mask(sub)
            if done is not None:
                replayed[idx[done]] = True
                keep[idx[done]] = False
            live = idx[keep[idx]]
            sub = sub if len(live) == len(idx) else b.take(live)
            uniq = f.unique_mask(sub)
            if uniq is not None:
                keep[live[~uniq]] = False
        dups = int(len(b) - keep.sum() - replayed.sum())
        b2 = b if keep.all() else b.take(np.flatnonzero(keep))
        G2 = G if keep.all() else G[keep]
        b2, G2, held = self.admit(b2, G2)
        rep = b.take(np.flatnonzero(replayed)) if replayed.any() else None
        return b2, G2, rep, dups, held

    def admit(self, b: EventBatch, G: np.ndarray | None = None) -> tuple:
        """Bring back stored users of the batch that are not in memory, and hold back the
        events of users below ``min_user_events`` (they are counted; the user gets state at
        their Nth event). Returns (the events to process, their groups, how many were held
        back); a shard of one group called without ``G`` returns (events, held back)."""
        single = G is None
        if single:
            G = self.groups_of(b.user)
        index = self.users.ids.index
        known = np.fromiter(map(index.get, b.user, repeat(-1)), dtype=np.int64, count=len(b))
        miss = known < 0
        if not miss.any():
            return (b, 0) if single else (b, G, 0)
        unknown = list(dict.fromkeys(b.user[miss].tolist()))
        keep = np.ones(len(b), dtype=bool)
        by_group: dict = {}
        for u in unknown:
            by_group.setdefault(self.group_of(u), []).append(u)
        for g, users in by_group.items():
            grp = self.group(g)
            if grp.checkpointer is not None:
                found = grp.checkpointer.load_users(users)
                users = [u for u in users if u not in found]
                if not users:
                    continue
            sel = np.flatnonzero(G == g)
            m = grp.filter.admit_mask(b.take(sel), users)
            if m is not None:
                keep[sel[~m]] = False
        held = int(len(b) - keep.sum())
        if held:
            b, G = b.take(np.flatnonzero(keep)), G[keep]
        return (b, held) if single else (b, G, held)

    # -- the step -----------------------------------------------------------------

    def process(self, b: EventBatch, want: np.ndarray | None = None, G: np.ndarray | None = None) -> ShardResult:
        """Evaluate-then-learn every event of ``b`` in order. Lists are computed for the
        events ``want`` marks (default: per ``settings.lists`` and ``settings.watch``).
        ``G``: the events' key groups (a shard of one group: its own)."""
        s = self.settings
        k = s.k
        n = len(b)
        if G is None:
            G = self.groups_of(b.user)
        U = self.users.rows(b.user)
        ua = self.users.arrays
        new = self.users.ids.new_rows
        ua["group"][U] = G
        if new:
            gs, counts = np.unique(ua["group"][np.array(new)], return_counts=True)
            for g, c in zip(gs.tolist(), counts.tolist()):
                self.group(g).total += c
        I, first_new_item = self.items.rows(b.item)
        ua["last_ts"][U] = b.ts  # the last write per user is their latest event
        self.users.reserve(U)
        if self.model.uses_features:
            fill_user_rows(self.features, self.users, U)
            self._item_features = fill_item_rows(self.features, self.items, self._item_features)
        labels = like_labels(b.etype, b.value, getattr(s.params, "like_threshold", 4.0))
        F = self.model.flags(b.etype, s.evaluate)
        if want is None and (s.lists != "none" or s.watch):
            last = occurrence(U)[2]
            if s.lists == "all":
                want = np.ones(n, dtype=bool)
            elif s.lists == "last":
                want = last
            else:
                want = last & np.isin(b.user, list(s.watch))
        explain = s.reasons and want is not None
        if want is not None:
            F[want] |= WANT_LIST | (EXPLAIN if explain else 0)
        out = outputs(n, k, explain)
        uev_before = ua["uev"][U]
        t0 = time.perf_counter()
        status = self._run(Events(U, I, b.value, labels, b.ts, b.etype, F, b.ctx_ptr, b.ctx_hash), out)
        busy = time.perf_counter() - t0
        if status >= 0:
            raise ModelDivergedError(s.model, b.user[status], b.item[status], int(b.seq[status]), self.model.hint())
        target = b.value if self.model.predicts_rating else labels.astype(np.float32)
        new_items = []
        if first_new_item < len(self.items):
            # rows >= first_new_item appeared first in this batch; find each one's first event
            rows, first = np.unique(I, return_index=True)
            sel = rows >= first_new_item
            ids = self.items.ids.ids
            new_items = [(ids[r], int(b.seq[e])) for r, e in zip(rows[sel], first[sel])]
        new_recs = first_recs(self.items, F, out.topk, b.seq) if s.evaluate else []
        for g, idx in group_runs(G):
            self.group(g).filter.mark_applied(b if len(idx) == n else b.take(idx))
        lists = None
        if want is not None:
            sel = np.flatnonzero(want)
            versions = uev_before[sel] + occurrence(U)[0][sel] + 1
            why = (out.why_item, out.why_val, out.why_src) if explain else None
            lists = list_records(b, sel, out.lst, out.lst_sc, self.items.ids.ids, s.model, versions, why,
                                 self.model.reason_sources)
        return ShardResult(shard=self.index, n=n, seq=b.seq, pred=out.pred, target=target, pos=out.pos,
                           new_items=new_items, new_recs=new_recs, users=self.total_users(), items=len(self.items),
                           lists=lists, busy_s=busy)

    def _run(self, events: Events, out: Outputs) -> int:
        """The kernel call over ``events`` (``kernelcall.run``): -1, or the index of the
        event after which the model diverged."""
        return run(self.model, self.users, self.items, events, out, self.settings.k)

    def recommend(self, user: str) -> dict:
        """The user's current list, read only (an unknown user gets the popularity list)."""
        row = self.users.ids.get(user)
        ck = self.group(self.group_of(user)).checkpointer
        if row < 0 and ck is not None:
            if user in ck.load_users([user]):
                row = self.users.ids.get(user)
        uev = int(self.users.arrays["uev"][row]) if row >= 0 else 0
        if self.model.uses_features:
            self._item_features = fill_item_rows(self.features, self.items, self._item_features)
        items, scores, why = read(self.model, self.users, self.items, row, self.settings.k, self.settings.reasons)
        rec = {"user": user, "items": items, "scores": scores.tolist(), "version": uev, "known": row >= 0}
        if why is not None:
            rec["reasons"] = reasons(self.items.ids.ids, *why, len(items), self.model.reason_sources)
        return rec
