"""Plain-Python references of the Numba kernels, used only by the tests.

Each reference follows its paper's update rules event by event with Python floats and
dicts (numpy only for float32 storage where the kernel stores float32; ``f32`` rounds a
value where the kernel stores or computes it in float32), with the same random stream, so
a kernel must agree with it to rounding.
"""

from __future__ import annotations

import math

import numpy as np

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
POP_HEAD = 4096  # the places of the popularity order kept sorted (kernels.popularity.HEAD)


def mix64(z: int) -> int:
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def hash_combine(a: int, b: int) -> int:
    return mix64((a * 0xBF58476D1CE4E5B9 + mix64(b + GOLDEN)) & M64)


class Rng:
    """SplitMix64 with the kernels' derived draws."""

    def __init__(self, state: int):
        self.state = state & M64

    def next(self) -> int:
        self.state = (self.state + GOLDEN) & M64
        return mix64(self.state)

    def uniform(self) -> float:
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)

    def below(self, n: int) -> int:
        return int(self.uniform() * n)

    def normal(self) -> float:
        u1 = max(self.uniform(), 1e-300)
        u2 = self.uniform()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


USER_SALT = 0x7573657273747265


def user_rng(user_id: str, seed: int) -> "Rng":
    """A user's own random stream: seeded by the id's hash and the job's seed."""
    from recsys_stream.events import stable_hash64

    return Rng(mix64(stable_hash64(user_id) ^ mix64((seed ^ USER_SALT) & M64)))


def item_row(item_id: str, seed: int, dim: int, std: float) -> list[float]:
    """An item row's initial values: a stream seeded by the id's hash and the job's seed."""
    from recsys_stream.events import stable_hash64

    rng = Rng(mix64(stable_hash64(item_id) ^ mix64(seed & M64)))
    return [std * rng.normal() for _ in range(dim)]


def item_rows(n_items: int, seed: int, dim: int, std: float) -> np.ndarray:
    """Rows of items ``i0 .. i{n-1}`` (the ids ``conftest.random_stream`` gives)."""
    return np.array([item_row(f"i{j}", seed, dim, std) for j in range(n_items)], np.float32).reshape(n_items, dim)


class Core:
    """Shared shard state: seen pairs, decayed popularity, recency rings, counts."""

    def __init__(self, half_life_days: float, recent: int, seed: int, index: int = 0):
        self.seed = seed
        self.rate = 0.0 if math.isinf(half_life_days) else math.log(2.0) / (half_life_days * 86400.0)
        self.lp: dict[int, float] = {}  # log of sum over the item's events of exp(rate * t)
        self.seen: set[tuple[int, int]] = set()
        self.R = recent
        self.recent: dict[int, list[int]] = {}
        self.uev: dict[int, int] = {}
        self.iev: dict[int, int] = {}
        self.n_users = 0
        self.n_items = 0
        self.active: set[int] = set()  # retired rows (none in these tests)
        self.rngs: dict[int, Rng] = {}

    def rng(self, u: int) -> "Rng":
        """User row u's stream (the user ids ``conftest.random_stream`` gives: ``u{row}``)."""
        r = self.rngs.get(u)
        if r is None:
            r = self.rngs[u] = user_rng(f"u{u}", self.seed)
        return r

    def observe(self, u: int, i: int, t: float) -> None:
        self.n_users = max(self.n_users, u + 1)
        self.n_items = max(self.n_items, i + 1)
        self.seen.add((u, i))
        x = self.rate * t
        a = self.lp.get(i)
        self.lp[i] = x if a is None else max(a, x) + math.log1p(math.exp(-abs(a - x)))
        self.recent.setdefault(u, []).append(i)
        self.uev[u] = self.uev.get(u, 0) + 1
        self.iev[i] = self.iev.get(i, 0) + 1

    def recent_item(self, u: int, back: int) -> int:
        hist = self.recent.get(u, [])
        if back >= len(hist) or back >= self.R:
            return -1
        return hist[len(hist) - 1 - back]

    def log_pop(self) -> list[float]:
        return [self.lp.get(j, -math.inf) for j in range(self.n_items)]

    def pop_order(self) -> list[int]:
        """Catalog rows by popularity, ties to the lower row (the kernel's maintained order)."""
        return sorted(range(self.n_items), key=lambda j: (-self.lp.get(j, -math.inf), j))

    def plin(self) -> list[float]:
        """The kernel's linear copy of popularity, ``exp(lp - ref)`` with ``ref`` the largest
        lp rounded down to a multiple of 300 (``kernels.popularity``: a function of lp alone)."""
        if not self.lp:
            return [0.0] * self.n_items
        ref = 300.0 * math.floor(max(self.lp.values()) / 300.0)
        return [math.exp(self.lp[j] - ref) if j in self.lp else 0.0 for j in range(self.n_items)]

    def pop_scores(self) -> list[float]:
        """Popularity relative to the most popular item (the order is what ranking uses)."""
        top = max(self.lp.values()) if self.lp else 0.0
        return [math.exp(self.lp[j] - top) if j in self.lp else 0.0 for j in range(self.n_items)]


def topk(scores, n_cat: int, u: int, seen: set, k: int, retired=frozenset()) -> list[int]:
    """Best k rows of ``scores[:n_cat]`` not seen by u; ties to the lower row."""
    cand = [j for j in range(n_cat) if (u, j) not in seen and j not in retired and scores[j] == scores[j]]
    cand.sort(key=lambda j: (-scores[j], j))
    return cand[:k]


def position(lst: list[int], i: int) -> int:
    return lst.index(i) if i in lst else -1


# -- biased MF (Koren et al. 2009), SGD ------------------------------------------------


class MF:
    def __init__(self, dim, lr, reg, ubias_min, ubias_c, ibias_min, ibias_c, bias_reg, init_std, adagrad, lo, hi,
                 n_users, n_items):
        self.dim, self.lr, self.reg = dim, lr, reg
        self.ubmin, self.ubc, self.ibmin, self.ibc = ubias_min, ubias_c, ibias_min, ibias_c
        self.breg, self.init = bias_reg, init_std
        self.adagrad, self.lo, self.hi = adagrad, lo, hi
        self.P = np.zeros((n_users, dim), np.float32)
        self.Q = np.zeros((n_items, dim), np.float32)  # set by the caller: rows from their ids
        self.bu = [0.0] * n_users
        self.bi = [0.0] * n_items
        self.cu = [0] * n_users
        self.ci = [0] * n_items
        self.gu = [0.0] * n_users
        self.gi = [0.0] * n_items
        self.gsum = 0.0
        self.gcnt = 0.0

    def predict_raw(self, u, i):
        mu = self.gsum / self.gcnt if self.gcnt > 0 else 0.5 * (self.lo + self.hi)
        raw = mu
        if self.cu[u] > 0:
            raw += self.bu[u]
        if self.ci[i] > 0:
            raw += self.bi[i]
        if self.cu[u] > 0 and self.ci[i] > 0:
            raw += sum(float(self.P[u, d]) * float(self.Q[i, d]) for d in range(self.dim))
        return raw

    def scores(self, u, n_cat):
        return [self.bi[j] + sum(float(self.P[u, d]) * float(self.Q[j, d]) for d in range(self.dim))
                for j in range(n_cat)]

    def learn(self, u, i, r, raw, rng: Rng):
        if self.cu[u] == 0:
            for d in range(self.dim):
                self.P[u, d] = self.init * rng.normal()
        err = r - raw
        self.bu[u] += max(self.ubmin, 1.0 / (self.cu[u] + self.ubc)) * (err - self.breg * self.bu[u])
        self.bi[i] += max(self.ibmin, 1.0 / (self.ci[i] + self.ibc)) * (err - self.breg * self.bi[i])
        eta_u = eta_i = self.lr
        if self.adagrad:
            g1 = sum((err * float(self.Q[i, d]) - self.reg * float(self.P[u, d])) ** 2 for d in range(self.dim))
            g2 = sum((err * float(self.P[u, d]) - self.reg * float(self.Q[i, d])) ** 2 for d in range(self.dim))
            self.gu[u] += g1 / self.dim
            self.gi[i] += g2 / self.dim
            eta_u = self.lr / math.sqrt(self.gu[u] + 1e-8)
            eta_i = self.lr / math.sqrt(self.gi[i] + 1e-8)
        pu_old = [float(x) for x in self.P[u]]
        for d in range(self.dim):
            self.P[u, d] = float(self.P[u, d]) + eta_u * (err * float(self.Q[i, d]) - self.reg * float(self.P[u, d]))
            self.Q[i, d] = float(self.Q[i, d]) + eta_i * (err * pu_old[d] - self.reg * float(self.Q[i, d]))
        self.cu[u] += 1
        self.ci[i] += 1
        self.gsum += r
        self.gcnt += 1.0


def run_mf(events, p, k, core: Core, rank: bool):
    """events: list of (u, i, rating, t); returns (preds, positions, model)."""
    n_users = max(e[0] for e in events) + 1
    n_items = max(e[1] for e in events) + 1
    m = MF(p.dim, p.lr, p.reg, p.user_bias_lr_min, p.user_bias_prior, p.item_bias_lr_min, p.item_bias_prior,
           p.bias_reg, p.init_std, p.adagrad, p.rating_min, p.rating_max, n_users, n_items)
    m.Q[:] = item_rows(n_items, core.seed, p.dim, p.init_std)
    preds, pos = [], []
    for u, i, r, t in events:
        raw = m.predict_raw(u, i)
        preds.append(min(max(raw, m.lo), m.hi))
        if rank:
            lst = topk(m.scores(u, core.n_items), core.n_items, u, core.seen, k)
            pos.append(position(lst, i) if i < core.n_items else -1)
        m.learn(u, i, r, raw, core.rng(u))
        core.observe(u, i, t)
    return preds, pos, m


# -- implicit factors: ISGD (Vinagre et al. 2014) + BPR negatives (Rendle et al. 2009) -------


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def f32(x: float) -> float:
    """``x`` rounded to float32 (a float32 store, or an operation on two float32 values:
    computed exactly or once rounded in float64, then rounded to float32, it is the float32
    result)."""
    return float(np.float32(x))


class Implicit:
    """The implicit factor model's state and per-event update (``run_implicit``, and the
    factor part of ``run_hybrid``).

    Rows hold float32 values (Python floats rounded by ``f32`` at every store). Where the
    kernel computes in float32 (a factor times a factor, the difference of two item factors
    and a factor times it) so does this, so a learned row agrees with the kernel's bit for
    bit; scores are float64 sums, the kernel's float32 sums (``score_factors``) differ from
    them by ~1e-7 relative."""

    def __init__(self, p, n_users: int, n_items: int, seed: int):
        self.p = p
        self.P = [[0.0] * p.dim for _ in range(n_users)]
        self.Q = item_rows(n_items, seed, p.dim, p.init_std).astype(np.float64).tolist()
        self.b = [0.0] * n_items
        self.cu = [0] * n_users
        self.ci = [0] * n_items

    def scores(self, u: int, n_cat: int) -> list[float]:
        pu, Q, b = self.P[u], self.Q, self.b
        return [b[j] + sum(x * q for x, q in zip(pu, Q[j])) for j in range(n_cat)]

    def learn(self, u: int, i: int, core: Core) -> None:
        """Event (u, i), after ``core.observe`` (negatives skip i and the user's items)."""
        p = self.p
        dim, lr, reg = p.dim, p.lr, p.reg
        P, qi, b = self.P[u], self.Q[i], self.b
        rng = core.rng(u)
        if self.cu[u] == 0:
            for d in range(dim):
                P[d] = f32(p.init_std * rng.normal())
        if p.isgd:
            err = 1.0 - sum(f32(P[d] * qi[d]) for d in range(dim))
            for d in range(dim):
                pu = P[d]
                P[d] = f32(pu + lr * (err * qi[d] - reg * pu))
                qi[d] = f32(qi[d] + lr * (err * pu - reg * qi[d]))
        order = None  # the popularity order as of this event (observed before learning)
        share = getattr(p, "head_negatives", 0.0)
        decay = getattr(p, "item_decay", 0.0)  # an item row's step decays with its updates
        lri = lr * math.sqrt(decay / (decay + self.ci[i])) if decay > 0 else lr
        for _ in range(p.negatives):
            j = -1
            for _t in range(p.neg_tries):
                if core.n_items > POP_HEAD and share > 0.0 and rng.uniform() < share:
                    if order is None:
                        order = core.pop_order()
                    c = order[rng.below(POP_HEAD)]  # uniform over the HEAD most popular
                else:
                    c = rng.below(core.n_items)
                if c != i and (u, c) not in core.seen:
                    j = c
                    break
            if j < 0:
                continue
            self.ci[j] += 1
            qj = self.Q[j]
            diff = [f32(qi[d] - qj[d]) for d in range(dim)]
            x = b[i] - b[j]
            for d in range(dim):
                x += f32(P[d] * diff[d])
            g = sigmoid(-x)
            lrj = lr * math.sqrt(decay / (decay + self.ci[j])) if decay > 0 else lr
            for d in range(dim):
                pu = P[d]
                P[d] = f32(pu + lr * (g * diff[d] - reg * pu))
                qi[d] = f32(qi[d] + lri * (g * pu - reg * qi[d]))
                qj[d] = f32(qj[d] + lrj * (-g * pu - reg * qj[d]))
            b[i] += lr * (g - p.bias_reg * b[i])
            b[j] += lr * (-g - p.bias_reg * b[j])
        self.cu[u] += 1
        self.ci[i] += 1

    def arrays(self):
        """(P, Q, b) as the kernel stores them."""
        return np.array(self.P, np.float32), np.array(self.Q, np.float32), list(self.b)


def run_implicit(events, p, k, core: Core, rank: bool = True):
    """Positions of each event's item in the list before it (``rank``; else none) and the
    state after the stream."""
    n_users = max(e[0] for e in events) + 1
    n_items = max(e[1] for e in events) + 1
    m = Implicit(p, n_users, n_items, core.seed)
    pos = []
    for u, i, _v, t in events:
        if rank:
            lst = topk(m.scores(u, core.n_items), core.n_items, u, core.seen, k)
            pos.append(position(lst, i) if i < core.n_items else -1)
        core.observe(u, i, t)
        m.learn(u, i, core)
    return (pos, *m.arrays())


# -- item-to-item co-occurrence ---------------------------------------------------------


class ItemKNN:
    """Item-to-item co-occurrence counts and scores (``run_itemknn``, and the item-to-item
    part of ``run_hybrid``).

    ``neighbors=None``: exact counts (the kernel's dense matrix). Otherwise a row holds at
    most ``neighbors`` entries ``[j, count]``; a newcomer to a full row replaces the entry
    with the smallest count (of equal counts, the higher row) and starts from its own weight
    (``kernels.neighbors``). The order of a row's entries means nothing (the kernel keeps a
    heap). Counts are float32."""

    def __init__(self, p, neighbors: int | None = None):
        self.p = p
        self.cap = neighbors
        self.rows: dict[int, list[list]] = {}
        self.n: dict[int, float] = {}
        self.evictions = 0

    def add(self, i: int, j: int, w: float) -> None:
        row = self.rows.setdefault(i, [])
        for ent in row:
            if ent[0] == j:
                ent[1] = f32(ent[1] + w)
                return
        if self.cap is None or len(row) < self.cap:
            row.append([j, f32(w)])
            return
        smin = min(range(len(row)), key=lambda s: (row[s][1], -row[s][0]))
        row[smin] = [j, f32(w)]
        self.evictions += 1

    def learn(self, u: int, i: int, core: Core) -> None:
        """Event (u, i), before ``core.observe``: the window is the user's previous items."""
        w = 1.0
        for back in range(self.p.window):
            j = core.recent_item(u, back)
            if j < 0:
                break
            if j != i:
                self.add(i, j, w)
                self.add(j, i, w)
            w *= self.p.gamma
        self.n[i] = self.n.get(i, 0.0) + 1.0

    def inv(self, j: int) -> float:
        c = self.n.get(j, 0.0)
        return math.pow(c, self.p.beta - 1.0) if c > 0 else 0.0

    def gather(self, u: int, core: Core) -> dict[int, float]:
        """sum_l alpha^l C[r_l, j] / n[r_l]^beta over the user's last ``recent`` items."""
        acc: dict[int, float] = {}
        w = 1.0
        for l in range(self.p.recent):
            r = core.recent_item(u, l)
            if r < 0:
                break
            c = self.n.get(r, 0.0)
            if c > 0:
                wr = w / math.pow(c, self.p.beta)
                for j, cnt in self.rows.get(r, ()):
                    acc[j] = acc.get(j, 0.0) + wr * cnt
            w *= self.p.alpha
        return acc

    def scores(self, u: int, core: Core, dense: bool = True) -> list[float]:
        """s(u, j) of every catalog item: co-occurrence part plus ``pop_weight * pop(j) /
        pop(top)``, written as the kernel writes it for its layout (dense: ``f * plin[j]``
        with ``f = pop_weight / plin[top]``; lists: ``pop_weight * (plin[j] / plin[top])``)."""
        acc = self.gather(u, core)
        n_cat = core.n_items
        plin = core.plin()
        order = core.pop_order()
        ptop = plin[order[0]] if n_cat > 0 else 0.0
        pw = self.p.pop_weight
        inv = self.inv
        if dense:
            f = pw / ptop if ptop > 0.0 else 0.0
            return [acc.get(j, 0.0) * inv(j) + f * plin[j] for j in range(n_cat)]
        return [acc.get(j, 0.0) * inv(j) + pw * (plin[j] / ptop if ptop > 0.0 else 0.0) for j in range(n_cat)]

    def matrix(self, n_items: int) -> np.ndarray:
        C = np.zeros((n_items, n_items), np.float32)
        for i, row in self.rows.items():
            for j, c in row:
                C[i, j] = c
        return C


def run_itemknn(events, p, k, core: Core):
    n_items = max(e[1] for e in events) + 1
    m = ItemKNN(p)
    pos = []
    for u, i, _v, t in events:
        n_cat = core.n_items
        lst = topk(m.scores(u, core), n_cat, u, core.seen, k)
        pos.append(position(lst, i) if i < n_cat else -1)
        m.learn(u, i, core)
        core.observe(u, i, t)
    return pos, m.matrix(n_items), [m.n.get(j, 0.0) for j in range(n_items)]


# -- popularity -------------------------------------------------------------------------


def run_pop(events, k, core: Core):
    pos = []
    for u, i, _v, t in events:
        lst = topk(core.pop_scores(), core.n_items, u, core.seen, k)
        pos.append(position(lst, i) if i < core.n_items else -1)
        core.observe(u, i, t)
    return pos


# -- FTRL-Proximal (McMahan et al. 2013) ------------------------------------------------


BIAS_HASH = 0x5BD1E9955BD1E995
USER_RATE_HASH = 0x2545F4914F6CDD1D
ITEM_RATE_HASH = 0x9FB21C651E98DF25
USER_VALUE_HASH = 0x8CB92BA72F3D8DD7
ITEM_VALUE_HASH = 0xD6E8FEB86659FD93


def like_feature_hashes(ufeat: list[int], ifeat: list[int], ctx: list[int], crosses: bool = True) -> list[int]:
    out = [BIAS_HASH] + list(ufeat) + list(ifeat) + list(ctx)
    if crosses:
        for a, ha in enumerate(ufeat):
            for bb, hb in enumerate(ifeat):
                if a == 0 and bb == 0:
                    continue
                out.append(hash_combine(ha, hb))
    return out


class Stats:
    """Online like-rate and value statistics (counting features)."""

    def __init__(self, prior: float):
        self.prior = prior
        self.ul, self.un, self.il, self.inn = {}, {}, {}, {}
        self.udev, self.ival = {}, {}
        self.likes = self.events = self.vsum = 0.0

    def features(self, u, j):
        m = self.prior
        p0 = (self.likes + 1.0) / (self.events + 2.0)
        v0 = self.vsum / self.events if self.events > 0 else 0.0

        def logit(l, n):
            r = min(max((l + m * p0) / (n + m), 0.02), 0.98)
            return math.log(r / (1.0 - r))

        un, inn = self.un.get(u, 0.0), self.inn.get(j, 0.0)
        return [
            (USER_RATE_HASH, logit(self.ul.get(u, 0.0), un)),
            (ITEM_RATE_HASH, logit(self.il.get(j, 0.0), inn)),
            (USER_VALUE_HASH, self.udev.get(u, 0.0) / (un + m)),
            (ITEM_VALUE_HASH, (self.ival.get(j, 0.0) + m * v0) / (inn + m) - v0),
        ]

    def learn(self, u, i, y, value):
        m = self.prior
        v0 = self.vsum / self.events if self.events > 0 else value
        item_mean = (self.ival.get(i, 0.0) + m * v0) / (self.inn.get(i, 0.0) + m)
        self.udev[u] = self.udev.get(u, 0.0) + value - item_mean
        self.ival[i] = self.ival.get(i, 0.0) + value
        self.ul[u] = self.ul.get(u, 0.0) + y
        self.un[u] = self.un.get(u, 0.0) + 1.0
        self.il[i] = self.il.get(i, 0.0) + y
        self.inn[i] = self.inn.get(i, 0.0) + 1.0
        self.likes += y
        self.events += 1.0
        self.vsum += value


class FTRL:
    def __init__(self, alpha, beta, l1, l2, bits):
        self.alpha, self.beta, self.l1, self.l2 = alpha, beta, l1, l2
        self.mask = (1 << bits) - 1
        self.z: dict[int, float] = {}
        self.n: dict[int, float] = {}

    def weight(self, c: int) -> float:
        z = self.z.get(c, 0.0)
        if abs(z) <= self.l1:
            return 0.0
        sgn = 1.0 if z > 0 else -1.0
        return -(z - sgn * self.l1) / ((self.beta + math.sqrt(self.n.get(c, 0.0))) / self.alpha + self.l2)

    def predict(self, row: list[tuple[int, float]]):
        w = [self.weight(c) for c, _x in row]
        s = max(-35.0, min(35.0, sum(wt * x for wt, (_c, x) in zip(w, row))))
        return sigmoid(s), w

    def update(self, row: list[tuple[int, float]], w: list[float], p: float, y: float) -> None:
        for (c, x), wt in zip(row, w):
            g = (p - y) * x
            n = self.n.get(c, 0.0)
            sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / self.alpha
            self.z[c] = self.z.get(c, 0.0) + g - sigma * wt
            self.n[c] = n + g * g


def run_ftrl(events, p, ufeat, ifeat, ctx):
    """events: (u, i, label, value); ufeat[u]/ifeat[i]: feature hash lists; ctx[e]: context hashes."""
    m = FTRL(p.alpha, p.beta, p.l1, p.l2, p.bits)
    stats = Stats(p.stats_prior)
    preds = []
    for e, (u, i, y, value) in enumerate(events):
        hashes = like_feature_hashes(ufeat[u], ifeat[i], ctx[e], p.crosses)
        x = 1.0 / math.sqrt(len(hashes)) if p.normalize else 1.0
        row = [(h & m.mask, x) for h in hashes]
        if p.stats:
            row += [(h & m.mask, v) for h, v in stats.features(u, i)]
        prob, w = m.predict(row)
        preds.append(prob)
        m.update(row, w, prob, y)
        stats.learn(u, i, y, value)
    return preds, m


# -- hybrid: implicit + item-to-item + popularity candidates, FTRL re-ranker ----------------

HYBRID_FEATURES = 7  # per activity bucket: bias, factor, item-to-item, popularity, 3 source ranks


def activity_bucket(n_events: int) -> int:
    """The user's activity bucket by events so far: none, 1-4, 5-19, 20-99, 100+."""
    return 0 if n_events == 0 else 1 if n_events < 5 else 2 if n_events < 20 else 3 if n_events < 100 else 4


def hybrid_candidates(u: int, imp: Implicit, knn: ItemKNN, core: Core, p, dense: bool):
    """The union of the three sources' lists (each without the user's items) and each
    candidate's features.

    Returns (candidates, features, gap): candidates in the order the kernel lists them (the
    factor list, then the item-to-item list's new rows, then popularity's: the re-ranker's
    negatives are drawn by index into it); features[j] the 7 values of candidate j; gap the
    smallest non-zero difference between neighbouring places of the factor list, its cut
    included (how far the kernel's float32 scores are from changing the candidates)."""
    n_cat = core.n_items
    s_mf = imp.scores(u, n_cat)
    mf = topk(s_mf, n_cat, u, core.seen, p.factor_candidates + 1)
    gap = min((s_mf[a] - s_mf[b] for a, b in zip(mf, mf[1:]) if s_mf[a] != s_mf[b]), default=math.inf)
    mf = mf[: p.factor_candidates]
    s_knn = knn.scores(u, core, dense)
    kl = topk(s_knn, n_cat, u, core.seen, p.candidates)
    pl = topk(core.log_pop(), n_cat, u, core.seen, p.pop_candidates)  # the popularity order
    r_mf = {j: r for r, j in enumerate(mf)}
    r_knn = {j: r for r, j in enumerate(kl)}
    r_pop = {j: r for r, j in enumerate(pl)}
    cand = mf + [j for j in kl if j not in r_mf] + [j for j in pl if j not in r_mf and j not in r_knn]
    knn_max = s_knn[kl[0]] if kl else 0.0  # the user's best item-to-item score
    plin = core.plin()
    pop_max = plin[pl[0]] if pl else 0.0  # popularity of the user's most popular candidate

    def place(ranks, j):
        return 1.0 / (1.0 + ranks[j]) if j in ranks else 0.0

    feats = {j: [1.0, s_mf[j], s_knn[j] / knn_max if knn_max > 0.0 else 0.0,
                 plin[j] / pop_max if pop_max > 0.0 else 0.0,
                 place(r_mf, j), place(r_knn, j), place(r_pop, j)] for j in cand}
    return cand, feats, gap


def hybrid_rerank(cand, feats, rr: FTRL, bucket: int) -> list[tuple[int, float]]:
    """Every candidate with its logit under the bucket's weights, best first, ties to the
    lower row (the list is the first k; its scores are the logits' sigmoids)."""
    base = bucket * HYBRID_FEATURES
    w = [rr.weight(base + t) for t in range(HYBRID_FEATURES)]
    logits = [(j, sum(wt * x for wt, x in zip(w, feats[j]))) for j in cand]
    return sorted((js for js in logits if js[1] == js[1]), key=lambda js: (-js[1], js[0]))


def hybrid_dense(p, n_items: int) -> bool:
    """Whether the kernel keeps item-to-item counts dense: while the item capacity (1024,
    doubled as needed) is at most ``dense_items`` (``pools.NeighborPool``)."""
    cap = 1024
    while cap < n_items:
        cap *= 2
    return cap <= p.dense_items


def run_hybrid(events, p, k, core: Core, lists: bool = True):
    """events: (u, i, value, t). For each event, prequentially: the candidates and their
    re-ranked order (the top k is the ranking), the re-ranker learns from the observed item
    (if a candidate) against ``rerank_negatives`` draws among the candidates (a draw of the
    observed item is skipped), the item-to-item part learns, the event is observed, the
    factor part learns; with ``lists``, the user's list after the event.

    Returns (ranked, after, pos, state): ranked[e]/after[e] every candidate of event e with
    its logit, best first, before learning and after (``[]`` without ``lists``); pos[e] the
    item's place in the top k (-1: not there); state the models (imp, knn, rr), whether the
    counts are dense and the smallest factor-list gap met (``hybrid_candidates``)."""
    n_users = max(e[0] for e in events) + 1
    n_items = max(e[1] for e in events) + 1
    if n_items > 1024 and p.dense_items > 0:
        raise ValueError("the kernel's layout could switch from dense to lists mid-stream: not modelled")
    dense = hybrid_dense(p, n_items)
    imp = Implicit(p.implicit(), n_users, n_items, core.seed)
    kp = p.itemknn()
    knn = ItemKNN(kp, None if dense else kp.neighbors)
    fp = p.reranker()
    rr = FTRL(fp.alpha, fp.beta, fp.l1, fp.l2, 6)  # coordinates bucket * 7 + feature, < 2**6
    ranked, after, pos = [], [], []
    gap = math.inf
    for u, i, _v, t in events:
        bucket = activity_bucket(core.uev.get(u, 0))
        cand, feats, g = hybrid_candidates(u, imp, knn, core, p, dense)
        gap = min(gap, g)
        order = hybrid_rerank(cand, feats, rr, bucket)
        ranked.append(order)
        top = [j for j, _s in order[:k]]
        pos.append(top.index(i) if i in top else -1)
        if i in feats:  # the observed item is a candidate: it was chosen among them
            base = bucket * HYBRID_FEATURES

            def learn(j, y):
                row = [(base + f, x) for f, x in enumerate(feats[j])]
                prob, w = rr.predict(row)
                rr.update(row, w, prob, y)

            learn(i, 1.0)
            if len(cand) > 1:
                for _ in range(p.rerank_negatives):
                    j = cand[core.rng(u).below(len(cand))]
                    if j != i:
                        learn(j, 0.0)
        knn.learn(u, i, core)
        core.observe(u, i, t)
        imp.learn(u, i, core)
        if lists:
            cand, feats, g = hybrid_candidates(u, imp, knn, core, p, dense)
            gap = min(gap, g)
            after.append(hybrid_rerank(cand, feats, rr, activity_bucket(core.uev[u])))
    state = {"imp": imp, "knn": knn, "rr": rr, "dense": dense, "gap": gap}
    return ranked, after, pos, state


# -- int8 quantisation --------------------------------------------------------------------


def quantize(Q: np.ndarray):
    q8 = np.zeros(Q.shape, np.int8)
    scale = np.zeros(Q.shape[0], np.float32)
    for j in range(Q.shape[0]):
        m = max(abs(float(x)) for x in Q[j])
        if m == 0:
            continue
        sc = m / 127.0
        scale[j] = sc
        inv = 1.0 / sc
        for f in range(Q.shape[1]):
            q8[j, f] = int(math.floor(float(Q[j, f]) * inv + 0.5))
    return q8, scale


def encode_item(items, row: int) -> bytes:
    """One item record, field by field as ``codec``'s docstring lays it out (the reference
    of ``codec.encode_items``)."""
    from recsys_stream import codec
    from recsys_stream.state import ROW

    a = items.arrays
    parts = [codec.U32.pack(row)] + [a[s.name][row].tobytes() for s in a.stored(ROW)]
    for name in sorted(items.pools):
        js, cs = items.pools[name].row(a, row)
        keys = items.index.key[np.asarray(js, dtype=np.int64)]
        parts += [codec.U32.pack(len(js)), keys.astype(np.uint64).tobytes(), cs.astype(np.float32).tobytes()]
    return b"".join(parts)
