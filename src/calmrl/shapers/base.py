"""The shaper protocol: a stateful object that adds dense rewards to a batch, never touching the env's.

A shaper is built once per run by the factory registered under its config name,

    factory(cfg: the `shaper` config group, ctx: ShaperContext) -> Shaper

and then called every iteration as `shaper(batch, trajectories) -> batch`. It fills
  - `batch.step_bonus`    [N]    dense reward per step row (e.g. the CALM subgoal bonus), and/or
  - `batch.token_rewards` [N, L] dense reward per response token (PRM min-form, implicit-Q, T-REG),
and may read the trajectories for the text the batch does not carry (observations, actions). The
trainer then folds the dense rewards into the step rewards (`calmrl.data.fold_shaping`) for every
algorithm that does not place token rewards itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from calmrl.data import Batch, Trajectory
from calmrl.registry import Registry
from calmrl.schemas.shaper import IDENTITY


@dataclass
class ShaperContext:
    """What a shaper may need from the run besides its own config."""

    tokenizer: Any  # the policy's tokenizer (decode responses, encode token-level text)
    device: Any  # torch.device the policy runs on
    run_dir: Path  # the run directory (caches such as the judge's go under it)
    policy_path: Path  # the policy's initial weights (a reference model for token-reward shapers)
    env_cfg: Any  # the env config group (an oracle judge reads the env's rules from it)


class Shaper(Protocol):
    def __call__(self, batch: Batch, trajectories: list[Trajectory]) -> Batch: ...


#: name -> factory(cfg, ctx) -> Shaper
SHAPERS: Registry = Registry("shaper")


class NoShaping:
    """The identity shaper: env rewards (with the invalid-action penalty) are used as they are."""

    def __call__(self, batch: Batch, trajectories: list[Trajectory]) -> Batch:
        return batch


@SHAPERS.register(IDENTITY)
def _no_shaping(cfg, ctx: ShaperContext) -> Shaper:
    return NoShaping()


def build_shaper(cfg, ctx: ShaperContext) -> Shaper:
    """The shaper named by `cfg.name`, built with its config and the run context."""
    return SHAPERS.get(cfg["name"])(cfg, ctx)
