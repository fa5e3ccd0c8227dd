"""RLOO — REINFORCE Leave-One-Out (Kool et al., 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!";
Ahmadian et al., 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs").

For the G trajectories sampled for one task (one `uid`), each trajectory's baseline is the mean return of
the OTHER G-1 members:
    A_i = R_i - 1/(G-1) * sum_{j != i} R_j  =  G/(G-1) * (R_i - mean_j R_j)
and every token of every step of trajectory i carries A_i. A group of one has no baseline and gets 0.
Advantages sum to 0 in each group.
"""

from __future__ import annotations

import torch

from calmrl.algos.registry import register
from calmrl.algos.segments import first_row_of_each, group_index, to_tokens


def rloo_advantages(returns: torch.Tensor, uid: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages, one group member per row.

    returns: [N] float, uid: [N] int64 group ids (any integers). Returns advantages [N].
    Vectorized with segment sums: A_i = R_i - (S_g - R_i) / (G_g - 1), S_g and G_g the sum and size of
    i's group; 0 for groups of one. Pass one row per trajectory to weight trajectories equally.
    """
    returns = returns.float()
    if returns.numel() == 0:
        return returns
    ids, num = group_index(uid)
    total = torch.zeros(num, dtype=returns.dtype).index_add_(0, ids, returns)
    count = torch.zeros(num, dtype=returns.dtype).index_add_(0, ids, torch.ones_like(returns))
    others = count[ids] - 1
    baseline = (total[ids] - returns) / others.clamp(min=1)
    return torch.where(others > 0, returns - baseline, torch.zeros_like(returns))


@register("rloo")
def rloo(batch, cfg) -> torch.Tensor:
    """advantages [N, L]: the trajectory's RLOO advantage on every response token of its steps."""
    rep, inverse = first_row_of_each(batch.traj)  # one row per trajectory
    per_traj = rloo_advantages(batch.episode_return[rep], batch.uid[rep])
    return to_tokens(per_traj[inverse], batch.response_mask)
