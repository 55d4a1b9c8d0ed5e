"""The validated, frozen settings objects the dataflow factories take, built from a
``RunConfig`` (``config``) in one place."""

from __future__ import annotations

from dataclasses import dataclass

from .config import RunConfig
from .shard import ShardSettings


@dataclass(frozen=True)
class CheckpointSettings:
    """Where and how shards keep their state (LMDB, see ``recsys_stream.storage``)."""

    path: str  # the LMDB environment's directory
    map_gb: float = RunConfig.checkpoint_map_gb  # LMDB map size (the file grows only as used)
    fallback: bool = False  # resume from the newest intact older generation if the named one is unusable
    root: str = ""  # the checkpoint directory (its recovery/ holds Bytewax's store): item buckets restore from it


@dataclass(frozen=True)
class FlowSettings:
    """What the dataflow factory needs."""

    shard: ShardSettings = ShardSettings()
    n_shards: int = 1  # key groups of users; fixed for the life of a checkpoint
    n_buckets: int = RunConfig.item_buckets  # owners' buckets of items; fixed for the life of a checkpoint
    processes: int = 1  # of the Bytewax cluster
    workers: int = 1  # per process
    process_id: int = 0
    value_range: tuple | None = None  # ratings outside it are dead letters (the model's range)
    flow_id: str = "recsys"
    # None: lists as ShardSettings.lists says (backtests); a number: the refresh policy
    refresh_interval_s: float | None = None
    max_lateness_s: float = 0.0  # raw input: events this far behind their partition's latest are dead letters
    checkpoint: CheckpointSettings | None = None

    def __post_init__(self):
        if self.n_shards < 1:
            raise ValueError(f"n_shards must be >= 1, got {self.n_shards}")
        if self.n_buckets < 1:
            raise ValueError(f"n_buckets must be >= 1, got {self.n_buckets}")
        if self.shard.ttl_s > 0 and self.checkpoint is None:
            raise ValueError("a TTL needs a checkpoint directory: expired users are kept there")


@dataclass(frozen=True)
class BacktestSettings:
    flow: FlowSettings = FlowSettings()
    workers: int = 1  # Bytewax worker threads in this process
    batch_size: int = 4096  # events per source batch
    passes: int = 1
    progress: bool = True

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


def shard_settings(cfg: RunConfig, **overrides) -> ShardSettings:
    """The shard's settings of a job or backtest configuration."""
    kw = dict(model=cfg.model, params=cfg.model_params(), k=cfg.k, seed=cfg.seed, half_life_days=cfg.half_life_days,
              rank=True if cfg.rank else None, evaluate=cfg.evaluate, dedupe_window_s=cfg.dedupe_window_s,
              min_user_events=cfg.min_user_events, ttl_s=cfg.ttl_s, reasons=cfg.reasons)
    kw.update(overrides)
    return ShardSettings(**kw)
