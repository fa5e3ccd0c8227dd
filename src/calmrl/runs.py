"""What every training loop (RL, preference, multi-agent) shares before its first step: the task seeds of an
iteration, the device, the run directory with its checkpoints and the point to resume from, and seeded RNGs."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from calmrl.config import hosts_vllm_cpu_engine
from calmrl.errors import ConfigError
from calmrl.learners.checkpoint import Checkpoint, CheckpointManager

log = logging.getLogger(__name__)


def train_seeds(seed: int, it: int, num_groups: int, eval_offset: int) -> list[int]:
    """Task seeds of iteration `it`, drawn below the eval range."""
    rng = np.random.default_rng([seed, it])
    return rng.integers(0, eval_offset, size=num_groups).tolist()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def start_run(loop, cfg: DictConfig, run_dir: Path) -> None:
    """The set-up every training loop shares (RL, preference, multi-agent): config, run directory, device,
    threads, the checkpoint manager, the checkpoint to resume from (or None), and seeded python / numpy /
    torch RNGs (a resumed run then restores the checkpoint's RNG states on top)."""
    loop.cfg, loop.run_dir = cfg, Path(run_dir)
    loop.device = pick_device(str(cfg.device))
    if cfg.cluster.num_threads:
        if hosts_vllm_cpu_engine(cfg.rollout):
            log.warning(
                "cluster.num_threads=%s not applied: this process runs vLLM's CPU build", cfg.cluster.num_threads
            )
        else:
            torch.set_num_threads(int(cfg.cluster.num_threads))
    loop.checkpoints = CheckpointManager(loop.run_dir / "checkpoints", keep_last=cfg.trainer.keep_last)
    loop.resume_from = find_resume_point(loop.checkpoints, cfg, loop.run_dir)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)


def find_resume_point(checkpoints: CheckpointManager, cfg: DictConfig, run_dir: Path) -> Checkpoint | None:
    """The newest valid checkpoint under `resume=auto`; None for a fresh run. Refuses (ConfigError, nothing
    touched) when `resume=never` meets checkpoints, or when step directories exist but none is valid."""
    existing = checkpoints.list()
    if str(cfg.resume) == "never":
        if existing:
            raise ConfigError(
                f"{run_dir} already holds checkpoints; pass resume=auto to continue it, or run_name=<new> "
                "for a fresh run (nothing was overwritten)"
            )
        return None
    latest = checkpoints.latest()
    # any step directory, complete-looking or not: a fresh start would discard the run's metrics
    present = list(checkpoints.directory.glob("step_*")) if checkpoints.directory.is_dir() else []
    if latest is None and present:
        raise ConfigError(
            f"none of the {len(present)} checkpoint(s) in {checkpoints.directory} is valid (see the warnings "
            "above); move them aside to start over, or pass run_name=<new> for a fresh run (nothing was overwritten)"
        )
    return latest
