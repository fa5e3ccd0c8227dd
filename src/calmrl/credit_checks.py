"""Credit checks: where an iteration's advantages are zero and why, and credit that should not exist.

The worst bugs in credit assignment are silent: rows that get exactly zero advantage (a group of one, a group whose
returns are all equal, a step the estimator skipped), tokens dropped at turn boundaries, advantages on prompt or
padding tokens (which the loss masks away, so nothing fails). `credit_metrics` measures these on every training
iteration, logged under `credit/`; `check_credit` turns the two that are always a bug into an error, for tests and
for anyone writing an estimator:

- credit outside the response mask (the estimator wrote advantages onto prompt or padding tokens);
- a dead informative group: its trajectories' returns differ, yet every one of its response tokens has zero
  advantage (the estimator dropped a group it had a signal for).

Zero credit has three causes, each measured: the estimator gave a token advantage 0 (a group of one, a group of
equal returns, or its own rule), or the loss left a credited token out (masked: rollout.correction=mask).

Zero advantage on a single token or row is not an error by itself: a GRPO member whose return equals its group's
mean gets exactly zero.
"""

from __future__ import annotations

import torch

from calmrl.algos.segments import group_index


def group_structure(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: (its group's id [N] in 0..G-1, its group's trajectory count [N], whether its group's trajectory
    returns are all equal [N] bool). A group is the rows sharing `uid`; a trajectory's return is `episode_return`."""
    group, num_groups = group_index(batch.uid)
    traj_group = torch.zeros(int(batch.traj.max()) + 1, dtype=torch.long).index_copy_(0, batch.traj, group)
    has_traj = torch.zeros_like(traj_group, dtype=torch.bool).index_fill_(0, batch.traj, True)
    sizes = torch.bincount(traj_group[has_traj], minlength=num_groups)
    returns = batch.episode_return.double()
    high = torch.full((num_groups,), -torch.inf, dtype=torch.float64).scatter_reduce(0, group, returns, "amax")
    low = torch.full((num_groups,), torch.inf, dtype=torch.float64).scatter_reduce(0, group, returns, "amin")
    return group, sizes[group], (high == low)[group]


def trajectory_outcome(batch, group: torch.Tensor | None = None) -> torch.Tensor:
    """Per trajectory id (0..max traj): +1 where its return is above its group's mean return over trajectories,
    -1 below, 0 level with it (within float rounding, which a float32 estimator cannot see) or absent from the
    batch. `group`: the rows' dense group ids when already computed ([N], `group_structure`)."""
    if group is None:
        group = group_structure(batch)[0]
    num_traj, num_groups = int(batch.traj.max()) + 1, int(group.max()) + 1
    returns = torch.zeros(num_traj, dtype=torch.float64).index_copy_(0, batch.traj, batch.episode_return.double())
    present = torch.zeros(num_traj, dtype=torch.bool).index_fill_(0, batch.traj, True)
    traj_group = torch.zeros(num_traj, dtype=torch.long).index_copy_(0, batch.traj, group)
    total = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, traj_group[present], returns[present])
    mean = (total / torch.bincount(traj_group[present], minlength=num_groups).clamp(min=1).double())[traj_group]
    deviation = returns - mean
    outcome = torch.sign(deviation) * (deviation.abs() > 1e-6 * (1.0 + mean.abs()))
    return outcome * present


def train_loss_mask(batch) -> torch.Tensor:
    """[N, L] bool: the tokens the policy loss trains on, its response mask less any token of zero loss weight."""
    trained = batch.response_mask.bool()
    return trained if batch.loss_weights is None else trained & (batch.loss_weights != 0)


def credit_metrics(batch, trained: torch.Tensor | None = None) -> dict[str, float]:
    """`credit/` diagnostics of `batch.advantages` [N, L] against `batch.response_mask` [N, L].

    trained: [N, L], the tokens the loss actually trains on (nonzero) when that is fewer than the response tokens
    (rollout.correction=mask drops tokens whose engine / learner ratio is out of range); their share of the response
    tokens left out is zero_credit_masked_frac: credit the estimator gave that no gradient carries.

    zero_adv_token_frac: response tokens with advantage exactly 0, split by cause into
    zero_adv_singleton_frac (the row's group has one trajectory), zero_adv_flat_group_frac (a larger group whose
    returns are all equal) and zero_adv_other_frac (the rest); singleton_groups and flat_groups count such groups;
    dead_informative_groups counts groups with differing returns and no credit at all; offmask_adv_abs_max is the
    largest |advantage| outside the response mask (0 for a correct estimator); adv_return_corr is the correlation,
    over trajectories, of a trajectory's summed advantage with its return.
    """
    adv, response = batch.advantages, batch.response_mask.bool()
    group, size, flat = group_structure(batch)
    tokens = response.sum().clamp(min=1).double()
    zero = (adv == 0) & response
    singleton = (size == 1)[:, None]
    flat_group = (flat & (size > 1))[:, None]
    zero_tokens = zero.sum()
    in_singletons, in_flat = (zero & singleton).sum(), (zero & flat_group).sum()

    num_groups = int(group.max()) + 1
    row_credited = ((adv != 0) & response).any(dim=1).long()
    credited = torch.zeros(num_groups, dtype=torch.long).scatter_reduce(0, group, row_credited, "amax") > 0
    first = torch.zeros(num_groups, dtype=torch.long).scatter_(0, group, torch.arange(len(group)))
    group_size, group_flat = size[first], flat[first]
    dead = (group_size > 1) & ~group_flat & ~credited

    traj_adv = torch.zeros(int(batch.traj.max()) + 1, dtype=torch.float64).index_add_(
        0, batch.traj, (adv * response).sum(dim=1).double()
    )
    traj_return = torch.zeros_like(traj_adv).index_copy_(0, batch.traj, batch.episode_return.double())
    present = torch.zeros_like(traj_adv, dtype=torch.bool).index_fill_(0, batch.traj, True)
    corr = _correlation(traj_adv[present], traj_return[present])
    outcome = trajectory_outcome(batch, group)
    informative = outcome != 0
    mismatch = (torch.sign(traj_adv) != outcome) & informative
    mismatch_frac = float(mismatch.sum() / informative.sum()) if bool(informative.any()) else 0.0
    # the mean step advantage of the rows of trajectories better / worse than their group
    step_adv = (adv * response).sum(dim=1).double() / response.sum(dim=1).clamp(min=1)
    better, worse = outcome[batch.traj] > 0, outcome[batch.traj] < 0
    return {
        "credit/zero_adv_token_frac": float(zero_tokens / tokens),
        "credit/zero_adv_singleton_frac": float(in_singletons / tokens),
        "credit/zero_adv_flat_group_frac": float(in_flat / tokens),
        "credit/zero_adv_other_frac": float((zero_tokens - in_singletons - in_flat) / tokens),
        "credit/singleton_groups": float((group_size == 1).sum()),
        "credit/flat_groups": float(((group_size > 1) & group_flat).sum()),
        "credit/dead_informative_groups": float(dead.sum()),
        "credit/offmask_adv_abs_max": float(adv[~response].abs().max()) if bool((~response).any()) else 0.0,
        "credit/adv_return_corr": corr,
        "credit/adv_sign_mismatch_frac": mismatch_frac,
        "credit/step_adv_better_mean": float(step_adv[better].mean()) if bool(better.any()) else 0.0,
        "credit/step_adv_worse_mean": float(step_adv[worse].mean()) if bool(worse.any()) else 0.0,
        "credit/zero_credit_masked_frac": float((response & ~trained.bool()).sum() / tokens)
        if trained is not None
        else 0.0,
    }


def check_credit(batch) -> dict[str, float]:
    """`credit_metrics(batch)`, raising ValueError on credit that is always a bug (see the module docstring)."""
    metrics = credit_metrics(batch)
    if metrics["credit/offmask_adv_abs_max"] != 0:
        raise ValueError(
            f"advantages outside the response mask (max |A| {metrics['credit/offmask_adv_abs_max']:.3g}): the "
            "estimator credits prompt or padding tokens"
        )
    if metrics["credit/dead_informative_groups"] > 0:
        raise ValueError(
            f"{int(metrics['credit/dead_informative_groups'])} group(s) whose returns differ got no credit on any "
            "response token: the estimator dropped a signal"
        )
    return metrics


def _correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two [M] tensors; 0 when either is constant (no linear relation to measure)."""
    if x.numel() < 2:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    denom = (x.square().sum() * y.square().sum()).sqrt()
    return float((x * y).sum() / denom) if float(denom) > 0 else 0.0
