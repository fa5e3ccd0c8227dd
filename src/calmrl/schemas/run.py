"""The top-level schemas of each command (train, eval, inspect, compare, eval_credit, replay) and the trainer group's
schedule. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING

from calmrl.schemas.bounds import bounded
from calmrl.schemas.common import Device


class Resume(StrEnum):
    auto = "auto"  # continue from the newest valid checkpoint of the run directory, if any
    never = "never"  # start fresh; refuse to overwrite a run directory that holds checkpoints


@dataclass
class TrainerConfig:
    total_iters: int = 200
    eval_every: int = 10  # greedy evaluation on held-out seeds every N iterations (0 = only start/end)
    checkpoint_every: int = 5
    keep_last: int = 2
    drop_env_errors: bool = True  # leave trajectories whose env crashed out of the update
    # every N-th iteration's batch, as the estimators get it, to <run dir>/rollouts (calmrl.recording); 0: none
    record_rollouts: int = bounded(0, ge=0)
    record_budget_mb: float = bounded(1024.0, gt=0)  # recording stops (with a warning) once it would pass this


@dataclass
class TrainConfig:
    env: Any = MISSING
    policy: Any = MISSING
    shaper: Any = MISSING
    algo: Any = MISSING
    rollout: Any = MISSING
    learner: Any = MISSING
    cluster: Any = MISSING
    logger: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    run_name: str = MISSING
    resume: Resume = Resume.auto
    device: Device = Device.auto
    data: str | None = None  # preference pairs for algo=dpo / dpo_treg: JSONL, parquet, or a `datasets` directory


@dataclass
class EvalConfig:
    env: Any = MISSING
    policy: Any = MISSING
    rollout: Any = MISSING
    cluster: Any = MISSING
    checkpoint: str | None = None  # a run directory, its checkpoints/ folder, or one step_XXXXXXXX directory
    seed: int = 0
    device: Device = Device.auto
    decode: Any = field(default_factory=lambda: {"name": "sample"})  # the `decode` group: sample | implicit_q_beam


@dataclass
class CompareConfig:
    runs: list[str] = field(default_factory=list)  # run directories, or sweep directories searched for runs
    metrics: list[str] = field(default_factory=lambda: ["eval/success_rate", "rollout/success_rate"])
    group_by: str = "algo.name"  # any dotted key of the runs' .hydra/config.yaml
    x: str = "env_steps"  # env_steps (cumulative perf/steps) | iter
    out: str | None = None  # output directory; None = the Hydra run directory (runs/compare/<time>)
    smooth: int = 1  # trailing moving-average window over each run's points (1 = none)


@dataclass
class EvalCreditConfig:
    env: Any = MISSING  # the oracle judge reads this env's rules
    shaper: Any = MISSING  # the calm shaper config: its judge and prompt templates
    demos: str = MISSING  # annotated demonstrations, JSONL (docs/judges.md)
    decompose: bool = False  # ask the judge for the subgoals too (default: the demos' annotated subgoals)
    out: str | None = None  # report directory; None = the Hydra run directory


@dataclass
class InspectConfig(EvalConfig):
    estimators: list[str] = field(default_factory=lambda: ["grpo", "rloo", "gigpo"])
    group_size: int = 8  # trajectories in the inspected group
    task_seed: int | None = None  # the group's task seed; None = env.eval_seed_offset (a held-out task)
    algo_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. +algo_overrides.gigpo.omega=0.5


@dataclass
class ReplayConfig:
    run: str = MISSING  # a training run directory with recorded batches (trainer.record_rollouts=N)
    estimators: list[str] = field(default_factory=lambda: ["grpo", "rloo", "gigpo"])
    reference: str = (
        "rloo"  # the estimator whose gradient (other batches, or reference_rollouts fresh) is the reference
    )
    algo_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. +algo_overrides.gigpo.omega=0.5
    checkpoint: str | None = None  # weights of the gradients: None = the run's newest checkpoint; base; or a dir
    fresh_batches: int = bounded(0, ge=0)  # N > 0: replay N batches sampled at those weights, not the recordings
    reference_rollouts: int = bounded(0, ge=0)  # K > 0: the reference is K fresh trajectories per task of a batch
    seed: int | None = None  # fresh_batches' tasks and sampling; None = the run's seed (its first N iterations' tasks)
    batches: int | None = bounded(None, ge=1)  # replay only the newest N recordings; None = all
    max_is_weight: float | None = bounded(10.0, gt=0)  # truncation of pi_theta / pi_sample; None = untruncated
    params: str | None = None  # a regex of the parameter names the gradient is measured on; None = all
    num_threads: int | None = bounded(None, ge=1)  # torch CPU threads; None = torch's default
    device: Device = Device.auto
