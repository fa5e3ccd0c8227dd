"""Vectorized group statistics shared by the estimators: no Python loop over rows or groups.

Groups are identified by arbitrary int64 keys (a uid, or a (uid, anchor) pair); `group_index` maps them
to dense ids 0..G-1 with `torch.unique`, and the statistics are segment reductions with `index_add_`.
"""

from __future__ import annotations

import torch


def group_index(*keys: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Dense group ids for rows that share every key.

    keys: each [N] int64 (any values). Returns (ids [N] int64 in 0..G-1, G), ids ordered like the sorted keys.
    The keys are packed into one int64 by mixed radix so a 1-D `torch.unique` does the grouping: a
    multi-column `unique(dim=0)` is two orders of magnitude slower on CPU.
    """
    packed, span = None, 1
    for key in keys:
        key = key.long()
        if key.numel() == 0:
            return key, 0
        low = key.min()
        width = int(key.max() - low) + 1
        if packed is None:
            packed, span = key - low, width
            continue
        if span * width >= 2**62:  # the packed key would overflow: densify what is packed so far
            _, packed = torch.unique(packed, return_inverse=True)
            span = int(packed.max()) + 1
        packed, span = packed * width + (key - low), span * width
    _, ids = torch.unique(packed, return_inverse=True)
    return ids, int(ids.max()) + 1


def segment_mean_std(values: torch.Tensor, ids: torch.Tensor, num_groups: int):
    """Per-group mean, unbiased std (torch's default, n-1) and size.

    values: [N] float, ids: [N] int64 in 0..G-1. Returns mean [G], std [G], count [G].
    A group of one has std 0 (its members get zero advantage anyway, see `normalize_in_groups`).
    """
    values = values.float()
    count = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, ids, torch.ones_like(values))
    mean = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, ids, values) / count
    sq_dev = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, ids, (values - mean[ids]) ** 2)
    std = torch.sqrt(sq_dev / (count - 1).clamp(min=1))
    return mean, std, count


SINGLETON_RULES = ("zero", "raw")


def normalize_in_groups(
    values: torch.Tensor, ids: torch.Tensor, norm: str = "std", eps: float = 1e-6, singleton: str = "zero"
) -> torch.Tensor:
    """(x - mean_group) / (std_group + eps), or x - mean_group for norm="mean".

    A group of one has no statistics: singleton="zero" gives it 0; singleton="raw" gives it mean 0 and std 1,
    i.e. x / (1 + eps) (x for norm="mean"), as the verl / verl-agent group estimators do.
    values: [N] float, ids: [N] int64 (any integers; made dense here). Returns [N].
    """
    if norm not in ("std", "mean"):
        raise ValueError(f"norm must be 'std' or 'mean', got {norm!r}")
    if singleton not in SINGLETON_RULES:
        raise ValueError(f"singleton must be one of {SINGLETON_RULES}, got {singleton!r}")
    if values.numel() == 0:
        return values.float()
    dense, num = group_index(ids)
    # Shift each group by its first member first: mathematically a no-op, but a group of equal values then
    # gives exactly 0 instead of float32 rounding residue of the mean (~1e-8) blown up by 1 / (std + eps).
    rep = torch.full((num,), values.numel(), dtype=torch.long).scatter_reduce_(
        0, dense, torch.arange(values.numel()), reduce="amin"
    )
    shifted = values.float() - values.float()[rep][dense]
    mean, std, count = segment_mean_std(shifted, dense, num)
    centered = shifted - mean[dense]
    if norm == "std":
        centered = torch.where(centered == 0, centered, centered / (std[dense] + eps))  # 0/0 when eps = 0
    alone = values.float() / (1.0 + eps) if norm == "std" else values.float()
    alone = alone if singleton == "raw" else torch.zeros_like(centered)
    return torch.where(count[dense] > 1, centered, alone)


def first_row_of_each(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows labelled by `ids` [N], the index of one representative row per distinct id, and each
    row's position among the representatives: (rep [G] int64, inverse [N] int64)."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    rows = torch.arange(ids.numel())
    # scatter_reduce amin picks the first row of each id deterministically
    rep = torch.full((unique.numel(),), ids.numel(), dtype=torch.long).scatter_reduce_(0, inverse, rows, reduce="amin")
    return rep, inverse


def to_tokens(row_values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast one value per row to every response token: [N] x [N, L] -> [N, L]."""
    return row_values.unsqueeze(1).to(response_mask.dtype) * response_mask


def on_last_token(row_values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Put each row's value on its last response token, zeros elsewhere: [N] x [N, L] -> [N, L].

    Rows without response tokens stay all zero.
    """
    out = torch.zeros_like(response_mask, dtype=torch.float32)
    has_response = response_mask.sum(1) > 0
    last = response_mask.shape[1] - 1 - torch.argmax(response_mask.flip(1).float(), dim=1)  # [N]
    rows = torch.arange(response_mask.shape[0])[has_response]
    out[rows, last[has_response]] = row_values.float()[has_response]
    return out


def discounted_reverse_cumsum(
    values: torch.Tensor, segment: torch.Tensor, position: torch.Tensor, gamma: float
) -> torch.Tensor:
    """out_i = sum over rows k of i's segment with position_k >= position_i of gamma^(position_k - position_i) * values_k.

    values: [N] float; segment: [N] int64 (e.g. trajectory ids, any integers); position: [N] int64, the
    row's index inside its segment (0..len-1, each at most once). Rows may come in any order.
    Returns [N]. The scan is a loop over positions (time), vectorized over all segments at once;
    GAE is this with values = TD errors and gamma = gamma * lambda.
    """
    if values.numel() == 0:
        return values.float()
    dense, num = group_index(segment)
    length = int(position.max()) + 1
    grid = torch.zeros(num, length, dtype=torch.float32)
    grid[dense, position] = values.float()
    acc = torch.zeros(num, dtype=torch.float32)
    for t in range(length - 1, -1, -1):
        acc = grid[:, t] + gamma * acc
        grid[:, t] = acc
    return grid[dense, position]


EPISODE_STATS = ("step_rows", "trajectory")


def row_scores(episode_return: torch.Tensor, penalty: torch.Tensor | None) -> torch.Tensor:
    """[N]: each step row's score, its trajectory's return less the row's own invalid-action penalty (verl-agent's
    `apply_invalid_action_penalty`; `penalty` is 0, or None, once folded into the rewards). Inputs [N]."""
    return episode_return.float() if penalty is None else episode_return.float() - penalty.float()


def episode_members(
    episode_return: torch.Tensor,
    penalty: torch.Tensor | None,
    uid: torch.Tensor,
    traj: torch.Tensor,
    episode_stats: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The members of an episode-level group statistic, and the map back to rows.

    step_rows:  one member per step row, scoring its trajectory's return less its OWN invalid-action penalty,
                score_n = episode_return[n] - penalty[n] (verl-agent's group estimators: every row of a
                trajectory counts, so long trajectories weigh more in the mean and std).
    trajectory: one member per trajectory, scoring its return (the papers' definition). Rows of one
                trajectory must then score alike, so the penalty must be folded into the rewards already.
    episode_return, penalty (None = 0), uid, traj: [N]. Returns (scores [M], group ids [M], member of each row [N]).
    """
    if episode_stats == "step_rows":
        return row_scores(episode_return, penalty), uid, torch.arange(episode_return.numel())
    if episode_stats != "trajectory":
        raise ValueError(f"episode_stats must be one of {EPISODE_STATS}, got {episode_stats!r}")
    if penalty is not None and bool(penalty.any()):
        raise ValueError(
            "episode_stats=trajectory needs the invalid-action penalty folded into the rewards (penalty_rule=folded)"
        )
    rep, inverse = first_row_of_each(traj)
    return episode_return[rep].float(), uid[rep], inverse
