"""Environments. Importing this package registers every built-in env in `ENVS`."""

from __future__ import annotations

from typing import Any

from calmrl.envs import gridworld  # noqa: F401  (registers "gridworld")
from calmrl.envs.base import ENVS, Observation, StepResult, TextEnv

__all__ = ["ENVS", "Observation", "StepResult", "TextEnv", "make_env", "FRAMEWORK_KEYS"]

#: keys of an env config read by the framework (rollout, evaluation), not passed to the env class
FRAMEWORK_KEYS = frozenset({"name", "invalid_penalty", "eval_episodes", "eval_seed_offset"})


def make_env(cfg: Any) -> TextEnv:
    """Build the env named by `cfg.name`; the env-specific keys of the config become kwargs."""
    from omegaconf import DictConfig, OmegaConf

    params = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    cls = ENVS.get(params["name"])
    return cls(**{k: v for k, v in params.items() if k not in FRAMEWORK_KEYS})
