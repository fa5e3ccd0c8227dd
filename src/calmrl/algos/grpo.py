"""GRPO — Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath), as used by GiGPO for agents.

For the G trajectories sampled for one task (one `uid`):
    A_i = (R_i - mean_j R_j) / (std_j R_j + eps)          norm="std"
    A_i =  R_i - mean_j R_j                               norm="mean"  (Dr.GRPO)
and every token of every step of trajectory i carries A_i. A group of one gets 0.
"""

from __future__ import annotations

import torch

from calmrl.algos.registry import register
from calmrl.algos.segments import first_row_of_each, normalize_in_groups, to_tokens


def grpo_advantages(returns: torch.Tensor, uid: torch.Tensor, norm: str = "std", eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised advantages, one group member per row.

    returns: [N] float, uid: [N] int64 group ids. Returns advantages [N].
    Pass one row per trajectory to weight trajectories equally (what `algo=grpo` does); passing step
    rows makes long trajectories count once per step in the group statistics.
    """
    return normalize_in_groups(returns, uid, norm=norm, eps=eps)


@register("grpo")
def grpo(batch, cfg) -> torch.Tensor:
    """advantages [N, L]: the trajectory's GRPO advantage on every response token of its steps."""
    rep, inverse = first_row_of_each(batch.traj)  # one row per trajectory
    per_traj = grpo_advantages(batch.episode_return[rep], batch.uid[rep], norm=str(cfg.norm_adv), eps=cfg.eps)
    return to_tokens(per_traj[inverse], batch.response_mask)
