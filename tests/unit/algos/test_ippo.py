"""algo=ippo (calmrl/multiagent/ippo.py), the independent-PPO baseline of env=multigrid: its GAE against a loop over
each agent's own episode, the clipped-PPO step, and what one play() records."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from calmrl.envs.multigrid import MultiGrid
from calmrl.multiagent.ippo import IPPOAgent, team_gae
from calmrl.schemas.algo import IPPOConfig


def reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """One agent's episode of len(rewards) steps (it ends after the last): GAE written as its definition,
    A_t = sum_k (gamma lam)^k delta_{t+k}, delta_t = r_t + gamma V_{t+1} - V_t with V after the end = 0."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]


@pytest.mark.parametrize("seed", range(4))
def test_team_gae_matches_a_loop_over_each_episode(seed):
    g = torch.Generator().manual_seed(seed)
    t_len, batch, agents, gamma, lam = 7, 5, 3, 0.9, 0.8
    lengths = torch.randint(1, t_len + 1, (batch,), generator=g)
    live = torch.arange(t_len)[:, None] < lengths[None, :]  # [T, B]: episode b lives for lengths[b] steps
    rewards = torch.randn(t_len, batch, generator=g) * live
    values = torch.randn(t_len, batch, agents, generator=g)
    adv = team_gae(rewards, values, live, gamma, lam)
    for b in range(batch):
        n = int(lengths[b])
        assert (adv[n:, b] == 0).all()  # after the episode ended: no credit
        for i in range(agents):  # every agent takes the team reward as its own, with its own values
            want = reference_gae(rewards[:n, b].tolist(), values[:n, b, i].tolist(), gamma, lam)
            torch.testing.assert_close(adv[:n, b, i], torch.tensor(want), rtol=1e-5, atol=1e-5)


def test_team_gae_with_lam_one_is_the_discounted_return_minus_the_value():
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[[0.5]], [[0.25]], [[-1.0]]])
    live = torch.ones(3, 1, dtype=torch.bool)
    adv = team_gae(rewards, values, live, gamma=0.5, lam=1.0)
    returns = [1.0 + 0.5 * 0.0 + 0.25 * 2.0, 0.0 + 0.5 * 2.0, 2.0]
    torch.testing.assert_close(adv[:, 0, 0], torch.tensor(returns) - values[:, 0, 0])


def _agent(env, **kw):
    cfg = {"name": "ippo", "hidden": 16, "lr": 1e-2, "ppo_epochs": 1, "clip_ratio": 0.2, **kw}
    return IPPOAgent(env, OmegaConf.structured(IPPOConfig(**cfg)), seed=0)


def test_play_records_live_steps_only():
    env = MultiGrid(32, size=4, agents=2, dirt=3, max_steps=10)
    agent = _agent(env)
    stats = agent.play(env, seed=1, greedy=False, learn=True)
    obs, actions, logp, values, rewards, live = agent._rollout
    assert obs.shape[:3] == actions.shape == logp.shape == values.shape  # [T, B, n]
    assert stats["env_steps"] == int(live.sum()) == int(env.t.sum()) < 32 * 10  # some episodes ended early
    assert (live[1:] <= live[:-1]).all()  # an episode that ended stays ended
    assert (logp <= 0).all() and torch.isfinite(values).all()


def test_greedy_play_is_deterministic_and_records_nothing_without_learn():
    env = MultiGrid(8, size=4, agents=2, dirt=3, max_steps=10)
    agent = _agent(env)
    a = agent.play(env, seed=2, greedy=True, learn=False)
    assert not hasattr(agent, "_rollout")
    assert agent.play(env, seed=2, greedy=True, learn=False) == a


def test_update_raises_the_probability_of_actions_with_positive_advantage():
    """One clipped-PPO epoch on a played batch: Adam's first step is a descent step on the surrogate
    -mean(A_hat * ratio) (A_hat: the advantages normalised over the batch, as update() does), so, to first
    order at a small lr, mean(A_hat * (log pi_new - log pi_old)) > 0."""
    env = MultiGrid(64, size=4, agents=2, dirt=3, max_steps=10)
    agent = _agent(env, entropy_coef=0.0, lr=1e-4)
    agent.play(env, seed=3, greedy=False, learn=True)
    obs, actions, old_logp, values, rewards, live = agent._rollout
    flat = live[..., None].expand_as(actions)
    adv = team_gae(rewards, values, live, agent.cfg.gamma, agent.cfg.lam)[flat]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    losses = agent.update()
    assert set(losses) == {"loss/ppo"} and math.isfinite(losses["loss/ppo"])
    with torch.no_grad():
        new_logp = torch.log_softmax(agent.policy(obs), -1).gather(-1, actions[..., None]).squeeze(-1)
    moved = (new_logp - old_logp)[flat]
    assert float((moved * adv).mean()) > 0
