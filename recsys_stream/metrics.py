"""Prequential metrics over a stream, merged from every shard.

Shards send per-event inputs (``ShardResult``): the prediction, the target, and the
position of the event's item in the pre-learning top-k. This module turns them into

- ``rmse``, ``mae`` over rating predictions (clipped to the rating range);
- ``logloss``, ``auc`` over like probabilities (AUC exact, ties averaged);
- ``hr@k`` (share of events whose item is in the top k), ``mrr@k`` (mean of 1/rank,
  0 for a miss), ``ndcg@k`` (mean of 1/log2(rank + 1), one relevant item),
  ``coverage@k`` (share of the catalog recommended at least once);

for the whole stream and by windows of events (curves).

Ranking protocol, used everywhere: for each event (u, i), before learning, every item the
stream has seen so far except those u already interacted with (and retired ones) is
ranked; ties go to the lower item row (the item seen first); a hit is i in the top k.
An item not seen before cannot be recommended and counts as a miss, and so does a
repeated interaction with an item the user already had.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def auc_score(p: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, tied scores get the average rank)."""
    y = y.astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    # average ranks of ties (1-based)
    bounds = np.flatnonzero(np.diff(ps)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(ps)]))
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(len(ps))
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(p: np.ndarray, y: np.ndarray) -> float:
    q = np.clip(p.astype(np.float64), 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def summarize(pred, target, pos, k: int, rating: bool, like: bool) -> dict:
    """Metrics of one set of events (the whole stream or one window)."""
    out: dict = {}
    if rating:
        m = ~np.isnan(pred)
        if m.any():
            err = pred[m].astype(np.float64) - target[m]
            out["rmse"] = float(math.sqrt(np.mean(err * err)))
            out["mae"] = float(np.mean(np.abs(err)))
            out["rated"] = int(m.sum())
    if like:
        m = ~np.isnan(pred)
        if m.any():
            out["logloss"] = logloss(pred[m], target[m])
            out["auc"] = auc_score(pred[m].astype(np.float64), target[m])
            out["labeled"] = int(m.sum())
    r = pos > -2
    if r.any():
        pr = pos[r].astype(np.float64)
        hit = pr >= 0
        pr = np.maximum(pr, 0.0)
        out[f"hr@{k}"] = float(hit.mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / (pr + 1.0), 0.0).mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(pr + 2.0), 0.0).mean())
        out["ranked"] = int(r.sum())
    return out


@dataclass
class MetricsAccumulator:
    """Collects shard results in any order; ``finish`` and ``curves`` compute metrics."""

    k: int
    rating: bool
    like: bool
    seq: list = field(default_factory=list)
    pred: list = field(default_factory=list)
    target: list = field(default_factory=list)
    pos: list = field(default_factory=list)
    item_first: dict = field(default_factory=dict)  # item id -> first seq seen
    rec_first: dict = field(default_factory=dict)  # item id -> first seq recommended
    shard_users: dict = field(default_factory=dict)
    events: int = 0
    lists: int = 0
    duplicates: int = 0  # events dropped as repeated ids
    filtered: int = 0  # events of users not admitted yet (frequency filter)
    busy_s: float = 0.0
    staleness: list = field(default_factory=list)  # seconds from another worker's write to its arrival here

    def add(self, r) -> None:
        self.events += r.n
        self.seq.append(r.seq)
        self.pred.append(r.pred)
        self.target.append(r.target)
        self.pos.append(r.pos)
        for ext, q in r.new_items:
            old = self.item_first.get(ext)
            if old is None or q < old:
                self.item_first[ext] = q
        for ext, q in r.new_recs:
            old = self.rec_first.get(ext)
            if old is None or q < old:
                self.rec_first[ext] = q
        self.shard_users[r.shard] = r.users
        self.duplicates += r.duplicates
        self.filtered += r.filtered
        if r.lists:
            self.lists += len(r.lists)
        self.busy_s += r.busy_s
        if r.staleness is not None and len(r.staleness):
            self.staleness.append(r.staleness)

    def _arrays(self):
        if not self.seq:
            e = np.zeros(0)
            return e.astype(np.int64), e.astype(np.float32), e.astype(np.float32), e.astype(np.int16)
        seq = np.concatenate(self.seq)
        order = np.argsort(seq, kind="stable")
        self.seq = [seq[order]]
        self.pred = [np.concatenate(self.pred)[order]]
        self.target = [np.concatenate(self.target)[order]]
        self.pos = [np.concatenate(self.pos)[order]]
        return self.seq[0], self.pred[0], self.target[0], self.pos[0]

    def finish(self) -> dict:
        seq, pred, target, pos = self._arrays()
        out = {"users": int(sum(self.shard_users.values())), "items": len(self.item_first)}
        out.update(summarize(pred, target, pos, self.k, self.rating, self.like))
        if (pos > -2).any() and self.item_first:
            out[f"coverage@{self.k}"] = len(self.rec_first) / len(self.item_first)
        if self.staleness:
            ages = np.concatenate(self.staleness)
            out["item_staleness_ms"] = {"p50": round(float(np.quantile(ages, 0.5)) * 1e3, 3),
                                        "p99": round(float(np.quantile(ages, 0.99)) * 1e3, 3), "n": int(len(ages))}
        return out

    def curves(self, window: int) -> list[dict]:
        """Metrics by windows of ``window`` consecutive events, plus running (cumulative)
        values at each window's end; O(events) apart from the per-window AUC."""
        seq, pred, target, pos = self._arrays()
        if not len(seq):
            return []
        k = self.k
        ok = ~np.isnan(pred)
        p64 = np.where(ok, pred, 0.0).astype(np.float64)
        t64 = target.astype(np.float64)
        cum = {}
        if self.rating:
            err = np.where(ok, p64 - t64, 0.0)
            cum["se"], cum["ae"], cum["nr"] = np.cumsum(err * err), np.cumsum(np.abs(err)), np.cumsum(ok)
        if self.like:
            q = np.clip(p64, 1e-15, 1 - 1e-15)
            ll = np.where(ok, -(t64 * np.log(q) + (1 - t64) * np.log(1 - q)), 0.0)
            cum["ll"], cum["nl"] = np.cumsum(ll), np.cumsum(ok)
        ranked = pos > -2
        if ranked.any():
            hit = ranked & (pos >= 0)
            pr = np.maximum(pos, 0).astype(np.float64)
            cum["hit"] = np.cumsum(hit)
            cum["rr"] = np.cumsum(np.where(hit, 1.0 / (pr + 1.0), 0.0))
            cum["ndcg"] = np.cumsum(np.where(hit, 1.0 / np.log2(pr + 2.0), 0.0))
            cum["nk"] = np.cumsum(ranked)
        item_seq = np.sort(np.fromiter(self.item_first.values(), dtype=np.int64, count=len(self.item_first)))
        rec_seq = np.sort(np.fromiter(self.rec_first.values(), dtype=np.int64, count=len(self.rec_first)))
        rows = []
        for start in range(0, len(seq), window):
            stop = min(start + window, len(seq))
            sl = slice(start, stop)
            row = {"events": stop, "first_seq": int(seq[start]), "last_seq": int(seq[stop - 1])}
            row.update(summarize(pred[sl], target[sl], pos[sl], k, self.rating, self.like))
            e = stop - 1
            if "nr" in cum and cum["nr"][e]:
                row["cum_rmse"] = math.sqrt(cum["se"][e] / cum["nr"][e])
                row["cum_mae"] = cum["ae"][e] / cum["nr"][e]
            if "nl" in cum and cum["nl"][e]:
                row["cum_logloss"] = cum["ll"][e] / cum["nl"][e]
            if "nk" in cum and cum["nk"][e]:
                n = cum["nk"][e]
                row[f"cum_hr@{k}"] = cum["hit"][e] / n
                row[f"cum_mrr@{k}"] = cum["rr"][e] / n
                row[f"cum_ndcg@{k}"] = cum["ndcg"][e] / n
                cat = int(np.searchsorted(item_seq, seq[e], side="right"))
                rec = int(np.searchsorted(rec_seq, seq[e], side="right"))
                row[f"cum_coverage@{k}"] = rec / cat if cat else 0.0
            rows.append(row)
        return rows
