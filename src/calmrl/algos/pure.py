"""PURE — min-form credit assignment for process rewards (Cheng et al., 2025, "Stop Summation: Min-Form Credit
Assignment Is All Process Reward Model Needs for Reasoning"), as its reference implementation computes it
(CJReinforce/PURE: `openrlhf/trainer/ppo_utils/experience_maker.py`, `process_experiences` with the RLOO
estimator and `make_experience_list`; the whitening is `NaiveReplayBuffer.normalize` in
`openrlhf/trainer/ppo_utils/replay_buffer.py`, called by `pure_trainer.py` unless
`--disable_advantage_normalization`).

Inputs per step row n of group g (the G responses to one problem, one `uid`):
  p[n, t]   the min-form process reward w_i r_i on step i's last token (`shaper=prm_minform`), else 0
  e[n, t]   1 on the tokens that end a step (`batch.token_reward_mask`; without a shaper: the last response token)
  c[n, t]   on a step end, the step's token count (response tokens since the previous step end, this one included)
  o[n]      the env's verifiable reward (math-verify: 1 solved, 0 not), `batch.rewards`
  h[n]      1 when the row's problem has an answer (`batch.has_answer`, from env=math's info["has_answer"])

RLOO baselines over the other G-1 responses of the group (reward_baseline, PURE's `--reward_baseline`):
  token:  b_n = sum_{m != n} sum_t p[m, t] / sum_{m != n} len_m          p'[n, t] = p[n, t] - b_n * c[n, t]
  step:   b_n = mean_{m != n} (sum_t p[m, t] / K_m)                       p'[n, t] = p[n, t] - b_n * e[n, t]
  verifiable:  v_n = h_n * verifiable_coef * (o_n - mean_{m != n, h_m} o_m), added at the last response token
(the reference uses o - 1 in {-1, 0}, and o = 1 for a problem without an answer, so such a group's term is 0;
a constant shift cancels in an RLOO baseline). Then with gamma = 1

  r[n, t] = p'[n, t] + [t = last] v_n          A[n, t] = sum_{t' >= t} r[n, t']      (reverse cumsum)

and, with `mask_step_end` (the reference's default, `--nomask_separator_adv` off), A = 0 on the step-end tokens.
A group of one has no baseline: its rows get 0. The KL to the reference policy is the learner's
(algo.kl_coef = 0.001, the paper's value) rather than folded into the reward as OpenRLHF does.

Whitening (`whiten_advantages`, on by default as in the reference) over the whole rollout batch: with Z the
response tokens whose A is exactly 0 (the step ends under `mask_step_end`; no Z without it) and M the others,
  mu = sum_M A / |M|      var = sum_{M and Z} (A - mu)^2 / |M|      A' = (A - mu) / sqrt(max(var, 1e-8))  on M,
  A' = 0 on Z. The variance sums the zero tokens' (0 - mu)^2 too but divides by |M|: the reference's formula.

Deviation from the reference, on purpose: its token baseline counts a step's tokens without its separator token
while dividing by full response lengths; here c counts every token of the step, so sum_t b_n c[n, t] = b_n len_n.
Multi-turn envs: every step row is its own response (the return does not cross turns), all rows of a uid a group.
The others (KL placement, loss, answer check) are listed in docs/algos/pure.md, "Faithful to the authors' code".
"""

from __future__ import annotations

import torch

from calmrl.algos.registry import register
from calmrl.algos.segments import group_index, on_last_token


def step_token_counts(step_end: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """c[n, t]: on each step-end token, the response tokens since the previous step end (inclusive); 0 elsewhere.

    step_end, response_mask: [N, L]. Returns [N, L] float.
    """
    mask = response_mask > 0
    ends = step_end.bool() & mask
    pos = torch.cumsum(mask.long(), dim=1)  # response tokens through t
    at_end = torch.where(ends, pos, torch.zeros_like(pos))
    prev = torch.cummax(at_end, dim=1).values  # through t; shift right for "before t"
    prev = torch.cat([torch.zeros_like(prev[:, :1]), prev[:, :-1]], dim=1)
    return torch.where(ends, pos - prev, torch.zeros_like(pos)).float()


def pure_token_rewards(
    process_rewards: torch.Tensor,
    step_end: torch.Tensor,
    response_mask: torch.Tensor,
    outcome: torch.Tensor,
    uid: torch.Tensor,
    verifiable_coef: float = 1.0,
    baseline: str = "token",
    has_answer: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Baselined token rewards r[n, t] (module docstring) and a [N] bool of rows that have a baseline (group > 1).

    process_rewards, step_end, response_mask: [N, L]; outcome: [N] float; uid: [N] int64; has_answer: [N] bool,
    rows whose outcome is a verifiable reward (None = all). A row without one gets no verifiable term and is
    left out of the others' verifiable baseline; it keeps its process rewards.
    """
    if baseline not in ("token", "step"):
        raise ValueError(f"baseline must be 'token' or 'step', got {baseline!r}")
    mask = (response_mask > 0).float()
    ends = step_end.bool() & (mask > 0)
    p = process_rewards.float() * mask
    ids, num = group_index(uid)

    def others_sum(x: torch.Tensor) -> torch.Tensor:  # sum over the OTHER rows of each row's group
        return torch.zeros(num, dtype=x.dtype).index_add_(0, ids, x)[ids] - x

    others = others_sum(torch.ones(len(uid)))
    has_baseline = others > 0
    pr = p.sum(1)  # [N] total process reward of the response
    if baseline == "token":
        b = others_sum(pr) / others_sum(mask.sum(1)).clamp(min=1.0)
        r = p - b.unsqueeze(1) * step_token_counts(ends, mask)
    else:
        per_step = pr / ends.sum(1).clamp(min=1)
        b = others_sum(per_step) / others.clamp(min=1.0)
        r = p - b.unsqueeze(1) * ends.float()
    h = torch.ones(len(uid)) if has_answer is None else has_answer.float()
    o = outcome.float() * h
    answered_others = others_sum(h)
    v = float(verifiable_coef) * (o - others_sum(o) / answered_others.clamp(min=1.0))
    # an answerless row's outcome is no signal (the env's 0, or a penalty folded into it): no verifiable term
    v = torch.where((h > 0) & (answered_others > 0), v, torch.zeros_like(v))
    r = r + on_last_token(v, mask)
    return torch.where(has_baseline.unsqueeze(1), r, torch.zeros_like(r)) * mask, has_baseline


def pure_advantages(
    token_rewards: torch.Tensor, response_mask: torch.Tensor, step_end: torch.Tensor | None = None
) -> torch.Tensor:
    """A[n, t] = sum_{t' >= t} r[n, t'] along each row (gamma = 1), 0 outside the response mask and, when
    `step_end` is given, 0 on those tokens. token_rewards, response_mask, step_end: [N, L]. Returns [N, L]."""
    mask = (response_mask > 0).float()
    adv = (token_rewards.float() * mask).flip(1).cumsum(1).flip(1) * mask
    if step_end is not None:
        adv = adv.masked_fill(step_end.bool(), 0.0)
    return adv


def whiten_advantages(
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    keep_zeros: bool = True,
    rows: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """The reference trainer's batch whitening of advantages (module docstring), over every row at once.

    advantages, response_mask: [N, L]; rows: [N] bool, rows that take part (None = all; the others come back 0).
    keep_zeros: tokens whose advantage is exactly 0 stay 0 and do not count in |M| (the reference ties this to
    masking the step separators). eps bounds the variance from below. Returns [N, L] float, 0 off the response.
    """
    adv = advantages.float()
    tokens = response_mask > 0
    if rows is not None:
        tokens = tokens & rows.bool().unsqueeze(1)
    moved = tokens & (adv != 0) if keep_zeros else tokens
    count = moved.sum()
    if count == 0:  # nothing to whiten (e.g. every group solved alike and no PRM): no signal stays no signal
        return torch.zeros_like(adv)
    x = adv.double()  # one sum over every token of the rollout: float64 keeps the rounding out of it
    mean = torch.where(tokens, x, 0.0).sum() / count
    var = torch.where(tokens, (x - mean) ** 2, 0.0).sum() / count
    out = (x - mean) * var.clamp(min=eps).rsqrt()
    return torch.where(moved, out, 0.0).to(adv.dtype)


def answer_rows(batch) -> torch.Tensor:
    """[N] bool: rows whose env reward is a verifiable one (env=math marks a problem without an answer with
    info["has_answer"] = False, kept by the batch as `has_answer`; other envs always verify)."""
    if batch.has_answer is None:
        return torch.ones(len(batch), dtype=torch.bool)
    return batch.has_answer.bool()


def step_ends_of(batch) -> torch.Tensor:
    """The shaper's step-end tokens, or each row's last response token when no shaper marked any: [N, L] bool."""
    if batch.token_reward_mask is not None:
        return batch.token_reward_mask.bool() & (batch.response_mask > 0)
    return on_last_token(torch.ones(len(batch)), batch.response_mask) > 0


@register("pure", reads_token_rewards=True)
def pure(batch, cfg) -> torch.Tensor:
    """advantages [N, L]: PURE's RLOO-baselined returns of min-form process rewards plus the verifiable reward,
    whitened over the batch when `cfg.whiten_advantages`."""
    mask = batch.response_mask
    process = batch.token_rewards if batch.token_rewards is not None else torch.zeros_like(mask, dtype=torch.float32)
    ends = step_ends_of(batch)
    rewards, has_baseline = pure_token_rewards(
        process,
        ends,
        mask,
        batch.rewards,
        batch.uid,
        verifiable_coef=float(cfg.verifiable_coef),
        baseline=str(cfg.reward_baseline),
        has_answer=answer_rows(batch),
    )
    adv = pure_advantages(rewards, mask, ends if cfg.mask_step_end else None)
    if cfg.whiten_advantages:
        # groups of one (impossible in the reference, which asserts n_samples_per_prompt > 1) stay out and at 0
        adv = whiten_advantages(adv, mask, keep_zeros=bool(cfg.mask_step_end), rows=has_baseline)
    return adv
