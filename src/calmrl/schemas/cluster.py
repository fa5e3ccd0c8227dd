"""The cluster group's schemas (cluster=local | ray): threads, and Ray's placement of learner ranks, rollout
workers and the reward worker. Ranges on the fields; imports no torch (and no ray)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from omegaconf import MISSING

from calmrl.schemas.bounds import bounded


@dataclass
class ClusterConfig:
    name: str = MISSING
    num_threads: int | None = bounded(None, ge=1)  # torch intra-op threads; None keeps torch's default


class Placement(StrEnum):
    colocate = "colocate"  # rollout worker i shares learner rank (i mod N)'s bundle (and its GPU, fractionally)
    split = "split"  # learners and rollout workers get bundles (and GPUs) of their own


class WeightSync(StrEnum):
    object_store = "object_store"  # rank 0's state dict through Ray's object store, no disk
    disk = "disk"  # rank 0 writes safetensors under the run directory; workers read them


class Strategy(StrEnum):
    """Ray's placement group strategies."""

    PACK = "PACK"  # as few nodes as fit the bundles
    SPREAD = "SPREAD"  # bundles over as many nodes as there are, when they fit
    STRICT_PACK = "STRICT_PACK"  # all bundles on one node, or fail
    STRICT_SPREAD = "STRICT_SPREAD"  # every bundle on a node of its own, or fail


@dataclass
class RayClusterConfig(ClusterConfig):
    address: str | None = None  # an existing cluster (ray://... or auto); None starts a local one
    num_cpus: int | None = bounded(None, ge=1)  # local cluster only: CPUs it may schedule; None = this machine's count
    num_learners: int = bounded(2, ge=1)  # DeepSpeed ranks (one actor each)
    num_rollout_workers: int = bounded(
        1, ge=1
    )  # generator + env pool actors; the iteration's episodes are split over them
    placement: Placement = Placement.split
    strategy: Strategy = Strategy.PACK  # the placement group's
    learner_cpus: float = bounded(1.0, gt=0)  # per learner rank
    learner_gpus: float = bounded(0.0, ge=0)  # per learner rank: 1 on a GPU node
    rollout_cpus: float = bounded(1.0, gt=0)  # per rollout worker
    rollout_gpus: float = bounded(0.0, ge=0)  # per rollout worker: 1 (split) or a fraction (colocate)
    reward_cpus: float = bounded(1.0, gt=0)  # the reward worker (the shaper and any model it loads: PRM, judge)
    reward_gpus: float = bounded(0.0, ge=0)  # the reward worker's: 1 (or a fraction) for a PRM or judge on GPU
    state_cpus: float = bounded(1.0, gt=0)  # the state worker (an algo state that holds a model: ArCHer's critic)
    state_gpus: float = bounded(0.0, ge=0)  # the state worker's: 1 (or a fraction) for the critic on GPU
    weight_sync: WeightSync = WeightSync.object_store
    max_worker_restarts: int = bounded(
        3, ge=0
    )  # rollout-worker deaths the run survives (each restarts the worker, retries)
    placement_timeout_s: float = bounded(300.0, gt=0)  # how long to wait for the placement group's resources
