"""Environments. Importing this package registers every built-in env in `ENVS`."""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

from calmrl.envs import (
    alfworld,  # noqa: F401  (registers "alfworld"; the alfworld extra loads only when a game does)
    gridworld,  # noqa: F401  (registers "gridworld")
    math,  # noqa: F401  (registers "math")
    minihack,  # noqa: F401  (registers "minihack"; the minihack extra loads only at the first reset)
    multiturn_instruct,  # noqa: F401  (registers "multiturn_instruct")
    twenty_questions,  # noqa: F401  (registers "twenty_questions", "guess_my_city")
    webshop,  # noqa: F401  (registers "webshop")
)
from calmrl.envs.base import ENVS, Observation, StepResult, TextEnv
from calmrl.envs.pool import EnvPool, InlinePool, ProcessPool
from calmrl.errors import ConfigError

__all__ = ["ENVS", "Observation", "StepResult", "TextEnv", "make_env", "make_pool", "FRAMEWORK_KEYS"]

#: keys of an env config read by the framework (rollout, evaluation), not passed to the env class
FRAMEWORK_KEYS = frozenset({"name", "invalid_penalty", "eval_episodes", "eval_seed_offset", "pool", "timeout_s"})


def make_env(cfg: Any) -> TextEnv:
    """Build the env named by `cfg.name`; the env-specific keys of the config become kwargs."""
    from omegaconf import DictConfig, OmegaConf

    params = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    cls = ENVS.get(params["name"])
    # A framework key reaches an env that names it in __init__ (e.g. eval_seed_offset, for envs whose
    # held-out seeds index a separate eval file).
    wanted = inspect.signature(cls).parameters
    try:
        return cls(**{k: v for k, v in params.items() if k not in FRAMEWORK_KEYS or k in wanted})
    except ConfigError:
        raise
    except (ValueError, OSError) as exc:  # a value out of range, a missing or malformed data file: the user's input
        raise ConfigError(f"env={params['name']}: {exc}") from exc


def make_pool(cfg: Any, n: int) -> EnvPool:
    """`n` envs of `cfg` behind the pool that `cfg.pool` names (inline or process)."""
    from omegaconf import DictConfig, OmegaConf

    params = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if str(params.get("pool", "inline")) == "process":
        return ProcessPool(partial(_make_env_for_slot, params), n, timeout_s=float(params.get("timeout_s", 60.0)))
    return InlinePool([make_env(params) for _ in range(n)])


def _make_env_for_slot(params: dict, slot: int) -> TextEnv:
    return make_env(params)  # every slot runs the same env config
