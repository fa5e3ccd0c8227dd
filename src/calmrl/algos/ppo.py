"""PPO with a learned critic and GAE (Schulman et al., 2016 "High-Dimensional Continuous Control Using
Generalized Advantage Estimation"; Schulman et al., 2017 "Proximal Policy Optimization Algorithms").

Multi-turn convention: the response tokens of a trajectory's steps, in order, form one token sequence
(prompt tokens are observations, not actions). A step's reward sits on its last response token (plus any
dense shaper `token_rewards`), the critic gives V_t at every response token, and the value after the
trajectory's last token is 0. Then

    delta_t = r_t + gamma * V_{t+1} - V_t
    A_t     = sum_k (gamma * lam)^k * delta_{t+k}          returns_t = A_t + V_t

so lam = 1 gives A = (discounted reward-to-go) - V, and lam = 0 gives A = delta.

`sequence=step` is verl-agent's PPO instead (the GiGPO paper's PPO baseline): every step row is a sequence of
its own whose only reward, on its last response token, is its episode's score (the trajectory's return less the
row's own invalid-action penalty under `penalty_rule=row`), so no value is bootstrapped across turns.
`whiten_advantages` whitens A over the batch's response tokens as verl's `compute_gae_advantage_return` does.
"""

from __future__ import annotations

import torch

from calmrl.algos.registry import register
from calmrl.algos.segments import discounted_reverse_cumsum, group_index, on_last_token, row_scores


def trajectory_token_positions(response_mask: torch.Tensor, traj: torch.Tensor, step: torch.Tensor):
    """Flatten response tokens into per-trajectory sequences.

    response_mask: [N, L]; traj, step: [N]. Returns (rows [M], cols [M], seq [M], pos [M]): the (row, column)
    of each of the M response tokens, its trajectory id, and its index in the trajectory's token sequence
    (steps in order, tokens in order within a step).
    """
    lengths = response_mask.sum(dim=1).long()  # [N]
    # Each row's offset = response tokens of the earlier steps of its trajectory: order rows by (traj, step),
    # take an exclusive cumsum, and subtract the cumsum at the start of each trajectory.
    dense, _ = group_index(traj)
    order = torch.argsort(dense * (int(step.max()) + 1) + step)
    sorted_len = lengths[order]
    exclusive = torch.cumsum(sorted_len, 0) - sorted_len
    start_of_traj = torch.zeros_like(exclusive).scatter_reduce_(
        0, dense[order], exclusive, reduce="amin", include_self=False
    )
    offsets = torch.empty_like(lengths)
    offsets[order] = exclusive - start_of_traj[dense[order]]

    rows, cols = response_mask.nonzero(as_tuple=True)  # row-major: columns ascend within a row
    first_col = torch.full((response_mask.shape[0],), response_mask.shape[1], dtype=torch.long)
    first_col.scatter_reduce_(0, rows, cols, reduce="amin")
    pos = offsets[rows] + (cols - first_col[rows])
    return rows, cols, traj[rows], pos


def gae_advantages(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    traj: torch.Tensor,
    step: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over each trajectory's response-token sequence.

    token_rewards, values, response_mask: [N, L]; traj, step: [N]. Returns (advantages [N, L], returns [N, L]),
    zero outside the response mask.
    """
    rows, cols, seq, pos = trajectory_token_positions(response_mask, traj, step)
    r = token_rewards[rows, cols].float()
    v = values[rows, cols].float()
    # V_{t+1}: the next token of the same trajectory, 0 after its last token.
    dense, num = group_index(seq)
    grid = torch.zeros(num, int(pos.max()) + 2)
    grid[dense, pos] = v
    v_next = grid[dense, pos + 1]
    delta = r + gamma * v_next - v
    adv = discounted_reverse_cumsum(delta, seq, pos, gamma * lam)
    advantages = torch.zeros_like(response_mask, dtype=torch.float32)
    returns = torch.zeros_like(response_mask, dtype=torch.float32)
    advantages[rows, cols] = adv
    returns[rows, cols] = adv + v
    return advantages, returns


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the tokens where mask == 1 (unbiased var), 0 elsewhere, as verl's
    `masked_whiten`. values, mask: [N, L]. Returns [N, L]."""
    mask = mask.float()
    count = mask.sum()
    mean = (values * mask).sum() / count.clamp(min=1.0)
    var = (((values - mean) * mask) ** 2).sum() / (count - 1).clamp(min=1.0)
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask


@register("ppo", requires=("values",), reads_token_rewards=True)
def ppo(batch, cfg) -> torch.Tensor:
    """advantages [N, L] from GAE; also fills batch.returns [N, L], the critic's regression targets."""
    if batch.values is None:
        raise ValueError("ppo needs critic values; the trainer fills batch.values from the critic")
    if str(cfg.get("sequence", "trajectory")) == "step":
        rewards = on_last_token(row_scores(batch.episode_return, batch.penalty), batch.response_mask)
        seq, step = torch.arange(len(batch)), torch.zeros_like(batch.step)  # every row its own sequence
    else:
        rewards = on_last_token(batch.rewards, batch.response_mask)
        seq, step = batch.traj, batch.step
    if batch.token_rewards is not None:
        rewards = rewards + batch.token_rewards * batch.response_mask
    advantages, returns = gae_advantages(
        rewards, batch.values, batch.response_mask, seq, step, gamma=cfg.gamma, lam=cfg.lam
    )
    batch.returns = returns  # verl regresses the critic on the returns before whitening, as here
    if cfg.get("whiten_advantages", False):
        advantages = masked_whiten(advantages, batch.response_mask)
    return advantages
