"""RLOO — REINFORCE Leave-One-Out (Kool et al., 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!";
Ahmadian et al., 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs").

For the G trajectories sampled for one task (one `uid`), each trajectory's baseline is the mean return of
the OTHER G-1 members:
    A_i = R_i - 1/(G-1) * sum_{j != i} R_j  =  G/(G-1) * (R_i - mean_j R_j)
and every token of every step of trajectory i carries A_i. Advantages sum to 0 in each group.

Members (`episode_stats`, see `segments.episode_members`): `step_rows` (the default, verl-agent's
`compute_rloo_outcome_advantage`): one member per step row, scoring its trajectory's return less its own
invalid-action penalty (`penalty_rule=row`); `trajectory`: one per trajectory, the penalty folded into the
rewards. A group of one has no baseline: it keeps its raw score (`singleton=raw`, verl-agent) or gets 0.
"""

from __future__ import annotations

import torch

from calmrl.algos.registry import register
from calmrl.algos.segments import episode_members, group_index, to_tokens


def rloo_advantages(returns: torch.Tensor, uid: torch.Tensor, singleton: str = "zero") -> torch.Tensor:
    """Leave-one-out advantages, one group member per row.

    returns: [N] float, uid: [N] int64 group ids (any integers). Returns advantages [N].
    Vectorized with segment sums: A_i = R_i - (S_g - R_i) / (G_g - 1), S_g and G_g the sum and size of
    i's group; a group of one gets 0, or its raw return with singleton="raw".
    """
    returns = returns.float()
    if returns.numel() == 0:
        return returns
    ids, num = group_index(uid)
    total = torch.zeros(num, dtype=returns.dtype).index_add_(0, ids, returns)
    count = torch.zeros(num, dtype=returns.dtype).index_add_(0, ids, torch.ones_like(returns))
    others = count[ids] - 1
    baseline = (total[ids] - returns) / others.clamp(min=1)
    alone = returns if singleton == "raw" else torch.zeros_like(returns)
    return torch.where(others > 0, returns - baseline, alone)


@register("rloo")
def rloo(batch, cfg) -> torch.Tensor:
    """advantages [N, L]: each row's RLOO advantage on every response token of the row."""
    scores, groups, member = episode_members(
        batch.episode_return, batch.penalty, batch.uid, batch.traj, str(cfg.episode_stats)
    )
    return to_tokens(rloo_advantages(scores, groups, str(cfg.singleton))[member], batch.response_mask)
