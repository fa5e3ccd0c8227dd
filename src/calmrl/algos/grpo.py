"""GRPO — Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath), as used by GiGPO for agents.

For the members of one task's group (one `uid`):
    A_i = (R_i - mean_j R_j) / (std_j R_j + eps)          norm="std"
    A_i =  R_i - mean_j R_j                               norm="mean"  (Dr.GRPO)
and every response token of row i carries A_i.

Members (`episode_stats`, see `segments.episode_members`): `step_rows` (the default, verl-agent's
`compute_grpo_outcome_advantage`): one member per step row, scoring its trajectory's return less its own
invalid-action penalty (`penalty_rule=row`); `trajectory`: one member per trajectory (the paper), with the
penalty folded into the rewards. A group of one keeps its raw score (`singleton=raw`, verl) or gets 0.
"""

from __future__ import annotations

import torch

from calmrl.algos.registry import register
from calmrl.algos.segments import episode_members, normalize_in_groups, to_tokens


def grpo_advantages(
    returns: torch.Tensor, uid: torch.Tensor, norm: str = "std", eps: float = 1e-6, singleton: str = "zero"
) -> torch.Tensor:
    """Group-normalised advantages, one group member per row.

    returns: [N] float, uid: [N] int64 group ids. Returns advantages [N].
    Pass one row per trajectory to weight trajectories equally; passing step rows makes long trajectories
    count once per step in the group statistics (what verl-agent does).
    """
    return normalize_in_groups(returns, uid, norm=norm, eps=eps, singleton=singleton)


@register("grpo")
def grpo(batch, cfg) -> torch.Tensor:
    """advantages [N, L]: each row's GRPO advantage on every response token of the row."""
    scores, groups, member = episode_members(
        batch.episode_return, batch.penalty, batch.uid, batch.traj, str(cfg.episode_stats)
    )
    adv = grpo_advantages(scores, groups, norm=str(cfg.norm_adv), eps=cfg.eps, singleton=str(cfg.singleton))
    return to_tokens(adv[member], batch.response_mask)
