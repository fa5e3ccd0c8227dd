"""The numbers `calmrl replay` computes on one batch, as tensor functions (the command is `calmrl.tools.replay`).

For a batch b and estimator e:

- **advantages** A_e [N, L], exactly as training computes them (the shaped batch, folded and penalised the
  estimator's way), with their statistics per token and per step and the `credit/` checks
  (`calmrl.credit_checks`);
- **the policy-gradient estimate** it implies at one fixed set of weights theta:

      g_e,b = (1 / T) sum_{tokens t} A_t w_t grad log pi_theta(a_t | s_t)        T = response tokens of the batch

  with w_t = min(pi_theta / pi_sample, max_is_weight) the (truncated) importance weight of the recorded token
  under theta (1 when theta sampled the batch), i.e. the gradient of PPO's unclipped surrogate at theta;
- **its noise across resampled groups**: the batch is G groups, g_e,b = mean_j z_j with z_j = G x (group j's
  share of the sum); resampling groups with replacement gives a batch estimate of variance
  tr Var = sum_j ||z_j - g||^2 / (G (G - 1)) (the unbiased form), and the signal-to-noise ratio
  SNR_b = sqrt(||g_e,b||^2 - tr Var) / sqrt(tr Var) (E||g||^2 = ||E g||^2 + tr Var: pure noise scores 0, not 1);
- **its cosine with a reference gradient** (`gradient_summary`): the mean, over the other batches, of the
  reference estimator's estimate (leave-one-batch-out, so no batch is compared with itself), or one reference per
  batch (a high-sample estimate on its tasks).

Across batches, `gradient_summary` gives the pooled SNR (the mean gradient's debiased norm against one batch's
noise: on batches drawn from one policy, an estimate of the SNR of one batch's estimate), the noise measured
across batches, and the cosine of the mean gradient with the reference. docs/replay.md has the derivations and
tests/unit/tools/test_replay.py checks them against a bandit's closed form.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from calmrl.algos.segments import group_index
from calmrl.credit_checks import credit_metrics, trajectory_outcome
from calmrl.data import Batch, apply_penalty_rule, fold_shaping, penalty_rule


# ---------------------------------------------------------------- estimators
def replay_problem(name: str, recorded: set[str]) -> str | None:
    """Why estimator `name` cannot be replayed on recordings holding the batch fields `recorded`, or None.
    Unknown names raise the algo registry's error (it lists every algo)."""
    from calmrl.algos import ALGOS

    method = ALGOS.get(name)
    if method.offline:
        return f"{name} trains on preference pairs, not on rollouts"
    if method.state is not None:
        return (
            f"{name} keeps state across iterations, built from the run's whole history, which a recording does not hold"
        )
    if method.needs_critic and "values" not in recorded:
        return f"{name} needs critic values, which only a run with a critic records (e.g. algo=ppo)"
    return None


def estimator_configs(names: Sequence[str], run_algo: Mapping, overrides: Mapping | None = None) -> dict[str, Any]:
    """{name: algo config}: the recorded run's own algo config for its algo (so replay reproduces its advantages),
    every other estimator's default (`conf/algo/<name>.yaml`); then `overrides[name]` on top."""
    from omegaconf import OmegaConf

    from calmrl.tools.inspect_credit import algo_config

    out = {}
    for name in names:
        cfg = OmegaConf.create(dict(run_algo)) if name == run_algo.get("name") else algo_config(name)
        extra = (overrides or {}).get(name)
        out[name] = OmegaConf.merge(cfg, extra) if extra else cfg
    return out


def estimator_view(batch: Batch, name: str, cfg) -> Batch:
    """The recorded (shaped, unfolded) batch as estimator `name` (config `cfg`) sees it in training, folded and
    penalised its way, with its `advantages` [N, L] filled in; the recorded batch itself is not changed."""
    from calmrl.algos import ALGOS

    method = ALGOS.get(name)
    view = Batch(**vars(batch))
    view.advantages = view.returns = None
    view = apply_penalty_rule(fold_shaping(view, method.reads_token_rewards), penalty_rule(cfg))
    view.advantages = method(view, cfg).detach().float()
    return view


def replay_advantages(batch: Batch, name: str, cfg) -> torch.Tensor:
    """advantages [N, L] of estimator `name` on a recorded batch, computed the way training computes them."""
    return estimator_view(batch, name, cfg).advantages


# ---------------------------------------------------------------- advantage statistics
def advantage_stats(batch: Batch) -> dict[str, Any]:
    """Per-token and per-step statistics of `batch.advantages` [N, L], the `credit/` checks, and the advantage per
    step position split by outcome (`mass_by_step`: for each step index, the mean step advantage of rows whose
    trajectory's return is above its group's mean ("better"), and below it ("worse");
    `credit_checks.trajectory_outcome`)."""
    from calmrl.tools.inspect_credit import step_advantages, within_trajectory_std

    tokens = batch.advantages[batch.response_mask.bool()].double()
    steps = step_advantages(batch.advantages, batch.response_mask).double()
    stats = {
        "token_mean": float(tokens.mean()) if tokens.numel() else 0.0,
        "token_std": float(tokens.std()) if tokens.numel() > 1 else 0.0,
        "token_abs_mean": float(tokens.abs().mean()) if tokens.numel() else 0.0,
        "step_abs_mean": float(steps.abs().mean()),
        "within_traj_step_std": within_trajectory_std(steps, batch.traj),
    }
    stats.update({k.removeprefix("credit/"): v for k, v in credit_metrics(batch).items()})
    outcome = trajectory_outcome(batch)[batch.traj]
    by_step: dict[int, dict[str, float | None]] = {}
    for t in batch.step.unique().tolist():
        at = batch.step == t
        better, worse = at & (outcome > 0), at & (outcome < 0)
        by_step[int(t)] = {
            "better": float(steps[better].mean()) if bool(better.any()) else None,
            "worse": float(steps[worse].mean()) if bool(worse.any()) else None,
            "rows": int(at.sum()),
        }
    stats["mass_by_step"] = by_step
    return stats


# ---------------------------------------------------------------- policy gradients
@dataclass
class BatchGradient:
    """One estimator's policy-gradient estimate on one batch of G groups: g = mean_j z_j."""

    mean: torch.Tensor  # [P] float64, g
    group_sq: float  # sum_j ||z_j||^2
    groups: int  # G

    @property
    def noise_var(self) -> float:
        """tr Var(g) over resampled groups, sum_j ||z_j - g||^2 / (G (G - 1)); nan for G < 2."""
        if self.groups < 2:
            return math.nan
        spread = self.group_sq - self.groups * float(self.mean.square().sum())
        return max(spread, 0.0) / (self.groups * (self.groups - 1))

    @property
    def snr(self) -> float:
        """||E g|| / sqrt(tr Var g), with ||E g||^2 estimated without the noise's bias as ||g||^2 - tr Var (a pure
        noise estimate scores about 0, not about 1); nan for G < 2."""
        return snr_from(float(self.mean.square().sum()) - self.noise_var, self.noise_var)


def snr_from(signal_sq: float, noise_var: float) -> float:
    """sqrt(max(signal_sq, 0) / noise_var); nan when the noise is not positive (or not known)."""
    if not (noise_var > 0):
        return math.nan
    return math.sqrt(max(signal_sq, 0.0) / noise_var)


def gradient_parameters(model, pattern: str | None = None) -> list[torch.nn.Parameter]:
    """The trainable parameters the gradient is measured on: all, or those whose name matches `pattern` (a regular
    expression, `re.search`; a billion-parameter policy's full gradient would need 8 bytes a parameter per
    estimator)."""
    import re

    from calmrl.errors import ConfigError

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if pattern is None:
        return [p for _, p in named]
    chosen = [p for n, p in named if re.search(pattern, n)]
    if not chosen:
        names = ", ".join(n for n, _ in named[:6])
        raise ConfigError(f"params={pattern!r} matches no trainable parameter of the policy (its first: {names}, ...)")
    return chosen


def batch_gradients(
    model,
    batch: Batch,
    advantages: Mapping[str, torch.Tensor],
    max_is_weight: float | None = None,
    params: Sequence[torch.nn.Parameter] | None = None,
) -> tuple[dict[str, BatchGradient], dict[str, float]]:
    """Each estimator's policy-gradient estimate at `model`'s weights on `batch` (see the module docstring), and
    the importance weights' diagnostics (is_weight_mean, is_truncated_frac, is_ess_frac: Kish's effective sample
    size over the response tokens, as a fraction of them; 1 when the model sampled the batch).

    advantages: {name: [N, L]}. One forward pass per group of rows, one backward per estimator and group; the
    gradient is the ascent direction of sum_t A_t w_t log pi(a_t) / T, over `params` (default: every trainable
    parameter, `gradient_parameters`).
    """
    from calmrl.learners.torch import token_logprobs

    params = list(params) if params is not None else gradient_parameters(model)
    device = params[0].device
    group, num_groups = group_index(batch.uid)
    mask = batch.response_mask.float()
    tokens = mask.sum().clamp(min=1.0)
    names = list(advantages)
    sums = {name: torch.zeros(sum(p.numel() for p in params), dtype=torch.float64) for name in names}
    squares = dict.fromkeys(names, 0.0)
    w_sum = w_sq = truncated = 0.0
    was_training = model.training
    model.eval()  # no dropout: the gradient is a function of the weights and the batch alone
    try:
        for j in range(num_groups):
            rows = (group == j).nonzero().squeeze(1)
            width = int(batch.attention_mask[rows].sum(1).max())
            ids = batch.input_ids[rows, :width].to(device)
            attention = batch.attention_mask[rows, :width].to(device)
            m = mask[rows, :width].to(device)
            logp = token_logprobs(model, ids, attention)
            ratio = torch.exp(logp.detach() - batch.old_logprobs[rows, :width].to(device)) * m
            weight = ratio if max_is_weight is None else ratio.clamp(max=float(max_is_weight))
            w_sum += float(weight.sum())
            w_sq += float(weight.square().sum())
            truncated += float(((ratio > weight) & (m > 0)).sum())
            for k, name in enumerate(names):
                objective = (advantages[name][rows, :width].to(device) * weight * logp).sum() / tokens
                grads = torch.autograd.grad(objective, params, retain_graph=k < len(names) - 1, allow_unused=True)
                flat = (
                    torch.cat(
                        [
                            (g if g is not None else torch.zeros_like(p)).reshape(-1)
                            for g, p in zip(grads, params, strict=True)
                        ]
                    )
                    .double()
                    .cpu()
                )
                sums[name] += flat
                squares[name] += float((num_groups * flat).square().sum())
    finally:
        model.train(was_training)
    count = float(tokens)
    diagnostics = {
        "is_weight_mean": w_sum / count,
        "is_truncated_frac": truncated / count,
        "is_ess_frac": (w_sum**2 / w_sq) / count if w_sq > 0 else 0.0,
    }
    return {name: BatchGradient(sums[name], squares[name], num_groups) for name in advantages}, diagnostics


def cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    denom = float(x.norm() * y.norm())
    return float(x @ y) / denom if denom > 0 else math.nan


def gradient_summary(
    gradients: Sequence[Mapping[str, BatchGradient]], reference: str | torch.Tensor | Sequence[torch.Tensor]
) -> dict[str, dict[str, Any]]:
    """Per estimator, over the batches: per-batch ||g||, noise, SNR and cosine with the reference, and the pooled
    numbers (see the module docstring). `reference`: an estimator's name (its estimate averaged over the other
    batches; with one batch, over that batch), one [P] gradient for every batch (a known true gradient), or one
    [P] gradient per batch (a high-sample estimate on each batch's tasks; the pooled cosine uses their mean)."""
    names = list(gradients[0])
    num = len(gradients)
    if isinstance(reference, str):  # the reference estimator's estimate, each batch against the others' mean
        own = [g[reference].mean for g in gradients]
        total = torch.stack(own).sum(0)
        references = [(total - o) / (num - 1) for o in own] if num > 1 else own
        pooled_reference = total / num
    elif isinstance(reference, torch.Tensor):
        references, pooled_reference = [reference] * num, reference
    else:
        references = list(reference)
        pooled_reference = torch.stack(references).mean(0)
    out = {}
    for name in names:
        per = [g[name] for g in gradients]
        stacked = torch.stack([g.mean for g in per])
        mean = stacked.mean(0)
        noise = [g.noise_var for g in per]
        finite_noise = [v for v in noise if math.isfinite(v)]
        pooled_noise = statistics.fmean(finite_noise) if finite_noise else math.nan
        across = float((stacked - mean).square().sum(1).sum()) / (num - 1) if num > 1 else math.nan
        out[name] = {
            "grad_norm": [float(g.mean.norm()) for g in per],
            "noise_std": [math.sqrt(v) if math.isfinite(v) else math.nan for v in noise],
            "snr": [g.snr for g in per],
            "cos_reference": [cosine(g.mean, r) for g, r in zip(per, references, strict=True)],
            # ||E g||^2 from the mean of the B batches (whose own noise is tr Var / B), against one batch's noise
            "pooled_snr": snr_from(float(mean.square().sum()) - pooled_noise / num, pooled_noise),
            "pooled_noise_std": math.sqrt(pooled_noise) if pooled_noise >= 0 else math.nan,
            "across_batch_noise_std": math.sqrt(across) if math.isfinite(across) else math.nan,
            "mean_grad_norm": float(mean.norm()),
            "mean_grad_cos_reference": cosine(mean, pooled_reference),
            "mean_grad": mean,
        }
    for name in names:  # how far apart the estimators point, on the same batches
        out[name]["mean_grad_cos"] = {other: cosine(out[name]["mean_grad"], out[other]["mean_grad"]) for other in names}
    return out
