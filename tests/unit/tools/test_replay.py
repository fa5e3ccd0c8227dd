"""`calmrl replay`'s estimates against known answers.

The closed-form case is a softmax bandit: one prompt token, a one-token response (the arm), a fixed reward per arm.
Its true policy gradient is grad J = pi * (r - J), and the exact mean and covariance of an estimator's per-group
estimate follow by enumerating every outcome of a group (3 arms, 4 members: 81 outcomes). Replay's pooled SNR, noise
and cosine on many sampled batches must match these within sampling error; one group's gradient must equal the
formula exactly. The bandit policy is a torch module with an HF model's call signature, so replay's own gradient
code (calmrl.learners.torch.token_logprobs) runs on it unchanged.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from calmrl.data import Batch
from calmrl.tools.inspect_credit import algo_config
from calmrl.tools.replay_stats import (
    BatchGradient,
    advantage_stats,
    batch_gradients,
    gradient_summary,
    replay_advantages,
    replay_problem,
)

# chosen so that GRPO's std normalisation turns its expected estimate 36 degrees away from the true gradient
REWARDS = torch.tensor([1.0, 0.2, 0.0], dtype=torch.float64)
THETA = torch.tensor([-1.0, 1.0, 0.5], dtype=torch.float64)
MEMBERS = 4  # trajectories per group


class Bandit(torch.nn.Module):
    """logits = theta at every position, whatever the context: a softmax bandit over the 3 tokens."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = torch.nn.Parameter(theta.clone().float())

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.theta.expand(*input_ids.shape, -1))


def bandit_batch(arms: torch.Tensor, sample_theta: torch.Tensor) -> Batch:
    """A batch of groups: arms [G, n] (the sampled responses) drawn from softmax(sample_theta)."""
    groups, n = arms.shape
    flat = arms.reshape(-1)
    rows = flat.numel()
    logp = torch.log_softmax(sample_theta, 0).float()
    reward = REWARDS.float()[flat]
    return Batch(
        input_ids=torch.stack([torch.zeros_like(flat), flat], 1),
        attention_mask=torch.ones(rows, 2, dtype=torch.long),
        response_mask=torch.tensor([[0.0, 1.0]]).repeat(rows, 1),
        old_logprobs=torch.stack([torch.zeros(rows), logp[flat]], 1),
        rewards=reward,
        uid=torch.arange(groups).repeat_interleave(n),
        traj=torch.arange(rows),
        step=torch.zeros(rows, dtype=torch.long),
        anchor=torch.arange(groups).repeat_interleave(n),
        invalid=torch.zeros(rows, dtype=torch.bool),
        episode_return=reward,
        penalty=torch.zeros(rows),
        anchor_text=["s"] * rows,
    )


def exact_moments(name: str, theta: torch.Tensor, sample_theta: torch.Tensor):
    """(E z, tr Cov z) of one group's estimate z = (1/n) sum_i A_i w_i (e_{a_i} - pi), w_i = pi(a_i) / pi_s(a_i),
    over every outcome of a group of MEMBERS draws from softmax(sample_theta)."""
    cfg = algo_config(name)
    pi, pi_s = torch.softmax(theta, 0), torch.softmax(sample_theta, 0)
    mean = torch.zeros(3, dtype=torch.float64)
    second = 0.0
    for outcome in itertools.product(range(3), repeat=MEMBERS):
        arms = torch.tensor([outcome])
        prob = float(torch.prod(pi_s[arms[0]]))
        adv = replay_advantages(bandit_batch(arms, sample_theta), name, cfg)[:, 1].double()
        z = torch.zeros(3, dtype=torch.float64)
        for a, advantage in zip(outcome, adv, strict=True):
            z += advantage * (pi[a] / pi_s[a]) * (torch.eye(3, dtype=torch.float64)[a] - pi) / MEMBERS
        mean += prob * z
        second += prob * float(z.square().sum())
    return mean, second - float(mean.square().sum())


def true_gradient(theta: torch.Tensor) -> torch.Tensor:
    pi = torch.softmax(theta, 0)
    return pi * (REWARDS - pi @ REWARDS)


def cos(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(x @ y / (x.norm() * y.norm()))


def sampled_gradients(names, theta, sample_theta, batches: int, groups: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    model = Bandit(theta)
    probs = torch.softmax(sample_theta, 0)
    out = []
    for _ in range(batches):
        arms = torch.multinomial(probs, groups * MEMBERS, replacement=True, generator=generator).reshape(groups, -1)
        batch = bandit_batch(arms, sample_theta)
        advantages = {n: replay_advantages(batch, n, algo_config(n)) for n in names}
        grads, _ = batch_gradients(model, batch, advantages, max_is_weight=None)
        out.append(grads)
    return out


def test_one_groups_gradient_is_the_formula():
    arms = torch.tensor([[0, 1, 1, 2]])
    batch = bandit_batch(arms, THETA)
    adv = replay_advantages(batch, "rloo", algo_config("rloo"))
    grads, weights = batch_gradients(Bandit(THETA), batch, {"rloo": adv})
    pi = torch.softmax(THETA, 0)
    expected = sum(adv[i, 1].double() * (torch.eye(3, dtype=torch.float64)[a] - pi) for i, a in enumerate([0, 1, 1, 2]))
    assert torch.allclose(grads["rloo"].mean, expected / 4, atol=1e-6)
    assert grads["rloo"].groups == 1 and math.isnan(grads["rloo"].noise_var)
    assert weights["is_weight_mean"] == pytest.approx(1.0) and weights["is_ess_frac"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "sample_theta", [THETA, torch.tensor([0.3, 0.2, -0.4], dtype=torch.float64)], ids=["on_policy", "off_policy"]
)
def test_snr_noise_and_cosine_match_the_closed_form(sample_theta):
    names, groups, batches = ["grpo", "rloo"], 8, 150
    gradients = sampled_gradients(names, THETA, sample_theta, batches, groups, seed=3)
    truth = true_gradient(THETA)
    summary = gradient_summary(gradients, reference=truth)
    for name in names:
        mean, trace = exact_moments(name, THETA, sample_theta)
        if name == "rloo":  # unbiased, with importance weights too: its expected estimate IS the true gradient
            assert torch.allclose(mean, truth, atol=1e-9)
        one_batch_noise = math.sqrt(trace / groups)
        true_snr = float(mean.norm()) / one_batch_noise
        # sampling error of the replay's estimates over `batches` batches
        noise_vars = torch.tensor([g[name].noise_var for g in gradients])
        rel_noise_se = float(noise_vars.std() / noise_vars.mean()) / math.sqrt(batches)
        mean_se = one_batch_noise / math.sqrt(batches)  # of the mean gradient's norm (each direction at most)
        s = summary[name]
        assert s["pooled_noise_std"] == pytest.approx(one_batch_noise, rel=4 * rel_noise_se / 2 + 0.01), name
        assert s["across_batch_noise_std"] == pytest.approx(one_batch_noise, rel=4 / math.sqrt(2 * batches)), name
        snr_rel = 4 * (mean_se / float(mean.norm()) + rel_noise_se / 2)
        assert s["pooled_snr"] == pytest.approx(true_snr, rel=snr_rel), name
        angle = math.acos(min(1.0, cos(mean, truth)))
        tolerance = 4 * mean_se / float(mean.norm())
        assert abs(math.acos(min(1.0, s["mean_grad_cos_reference"])) - angle) < tolerance, name
    # GRPO's std normalisation biases its direction: the closed form says so, and replay measured it above
    grpo_mean, _ = exact_moments("grpo", THETA, sample_theta)
    assert cos(grpo_mean, truth) < math.cos(math.radians(10))


def test_noise_and_snr_of_known_group_estimates():
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 2.0]], dtype=torch.float64)  # three groups' estimates
    g = BatchGradient(z.mean(0), float(z.square().sum()), groups=3)
    spread = float((z - z.mean(0)).square().sum())
    assert g.noise_var == pytest.approx(spread / 6)
    assert g.snr == pytest.approx(math.sqrt((float(z.mean(0).square().sum()) - spread / 6) / (spread / 6)))
    pure_noise = BatchGradient(torch.zeros(2, dtype=torch.float64), 8.0, groups=4)
    assert pure_noise.snr == 0.0  # a signal-free estimate is not credited with its noise


def test_reference_leaves_the_compared_batch_out():
    def grad(v):
        return {"a": BatchGradient(torch.tensor(v, dtype=torch.float64), 0.0, 1)}

    gradients = [grad([1.0, 0.0]), grad([0.0, 1.0]), grad([0.0, 1.0])]
    summary = gradient_summary(gradients, reference="a")["a"]
    # batch 0 against the mean of batches 1 and 2 (0, 1): orthogonal; batch 1 against (0.5, 0.5)
    assert summary["cos_reference"][0] == pytest.approx(0.0)
    assert summary["cos_reference"][1] == pytest.approx(1 / math.sqrt(2))
    assert summary["mean_grad_cos_reference"] == pytest.approx(1.0)


def test_advantage_mass_by_step_splits_by_outcome():
    # two trajectories of one group, two steps each: returns 1 and 0, so traj 0 did better than the group
    batch = Batch(
        input_ids=torch.ones(4, 3, dtype=torch.long),
        attention_mask=torch.ones(4, 3, dtype=torch.long),
        response_mask=torch.tensor([[0, 1, 1]] * 4, dtype=torch.float32),
        old_logprobs=torch.zeros(4, 3),
        rewards=torch.tensor([0.0, 1.0, 0.0, 0.0]),
        uid=torch.zeros(4, dtype=torch.long),
        traj=torch.tensor([0, 0, 1, 1]),
        step=torch.tensor([0, 1, 0, 1]),
        anchor=torch.tensor([0, 1, 0, 2]),
        invalid=torch.zeros(4, dtype=torch.bool),
        episode_return=torch.tensor([1.0, 1.0, 0.0, 0.0]),
        anchor_text=["a", "b", "a", "c"],
    )
    adv = torch.tensor([[0, 0.5, 0.5], [0, 2.0, 2.0], [0, -1.0, -1.0], [0, -3.0, -3.0]])
    stats = advantage_stats(replace(batch, advantages=adv))
    assert stats["mass_by_step"][0] == {"better": 0.5, "worse": -1.0, "rows": 2}
    assert stats["mass_by_step"][1] == {"better": 2.0, "worse": -3.0, "rows": 2}
    assert stats["within_traj_step_std"] == pytest.approx(0.875)  # the two trajectories: std 0.75 and 1.0
    assert stats["adv_sign_mismatch_frac"] == 0.0
    assert advantage_stats(replace(batch, advantages=-adv))["adv_sign_mismatch_frac"] == 1.0  # sign-flipped


def test_what_cannot_be_replayed_says_why():
    assert "preference pairs" in replay_problem("dpo", set())
    assert "state across iterations" in replay_problem("archer", set())
    assert "critic values" in replay_problem("ppo", {"advantages"})
    assert replay_problem("ppo", {"values"}) is None
    assert replay_problem("grpo", set()) is None
