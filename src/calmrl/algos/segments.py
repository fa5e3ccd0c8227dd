"""Vectorized group statistics shared by the estimators: no Python loop over rows or groups.

Groups are identified by arbitrary int64 keys (a uid, or a (uid, anchor) pair); `group_index` maps them
to dense ids 0..G-1 with `torch.unique`, and the statistics are segment reductions with `index_add_`.
"""

from __future__ import annotations

import torch


def group_index(*keys: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Dense group ids for rows that share every key.

    keys: each [N] int64. Returns (ids [N] int64 in 0..G-1, G).
    """
    stacked = torch.stack([k.long() for k in keys], dim=1)  # [N, K]
    _, ids = torch.unique(stacked, dim=0, return_inverse=True)
    return ids, int(ids.max()) + 1 if ids.numel() else 0


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


def normalize_in_groups(values: torch.Tensor, ids: torch.Tensor, norm: str = "std", eps: float = 1e-6) -> torch.Tensor:
    """(x - mean_group) / (std_group + eps), or x - mean_group for norm="mean"; 0 for groups of one.

    values: [N] float, ids: [N] int64 (any integers; made dense here). Returns [N].
    """
    if values.numel() == 0:
        return values.float()
    dense, num = group_index(ids)
    mean, std, count = segment_mean_std(values, dense, num)
    centered = values.float() - mean[dense]
    if norm == "std":
        centered = centered / (std[dense] + eps)
    elif norm != "mean":
        raise ValueError(f"norm must be 'std' or 'mean', got {norm!r}")
    return torch.where(count[dense] > 1, centered, torch.zeros_like(centered))


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
