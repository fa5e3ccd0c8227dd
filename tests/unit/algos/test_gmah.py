"""GMAH: the monotonic mixer, the two TD losses (hand-checked targets), soft updates, the replay buffer and
the agent's option bookkeeping."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from calmrl.algos.gmah import GMAHNetworks, QMixer, high_level_td_loss, low_level_td_loss, soft_update
from calmrl.envs.multigrid import MultiGrid
from calmrl.multiagent.gmah import GMAHAgent
from calmrl.multiagent.replay import TensorReplay
from calmrl.schemas.algo import GMAHConfig

# ---------------------------------------------------------------- mixer


class _UnconstrainedMixer(QMixer):
    """The mixer without |.| on the hypernet weights: what the monotonicity check must reject."""

    def forward(self, agent_qs, state):
        b = agent_qs.shape[0]
        w1 = self.hyper_w1(state).view(b, self.n, self.embed)
        hidden = F.elu(torch.bmm(agent_qs.unsqueeze(1), w1).squeeze(1) + self.hyper_b1(state))
        return (hidden * self.hyper_w2(state)).sum(-1) + self.value(state).squeeze(-1)


def _min_partial(mixer: QMixer, seed: int, n: int, state_dim: int, batch: int = 256) -> float:
    g = torch.Generator().manual_seed(seed)
    qs = (torch.randn(batch, n, generator=g) * 5).requires_grad_(True)
    state = torch.randn(batch, state_dim, generator=g) * 3
    mixer(qs, state).sum().backward()  # rows are independent: d sum / d q[b, i] = d Q_tot[b] / d q[b, i]
    return float(qs.grad.min())


@pytest.mark.parametrize("n", [1, 2, 4])
def test_mixer_is_monotonic_in_every_agent_value(n):
    for seed in range(25):
        torch.manual_seed(seed)
        mixer = QMixer(n, state_dim=7, embed=8, hyper_hidden=16)
        if seed % 2:  # also with hypernet outputs pushed negative: |.| must still keep the weights >= 0
            with torch.no_grad():
                for layer in (mixer.hyper_w1[-1], mixer.hyper_w2[-1]):
                    layer.weight.mul_(-3.0)
                    layer.bias.fill_(-1.0)
        assert _min_partial(mixer, seed, n, 7) >= 0.0, f"negative dQ_tot/dq_i at seed {seed}"


def test_monotonicity_check_rejects_an_unconstrained_mixer():
    # the same check catches a mixer whose weights can go negative (so the test above can fail)
    worst = min(_min_partial(_UnconstrainedMixer(3, 7, 8, 16), seed, 3, 7) for seed in range(5))
    assert worst < 0.0


def test_mixer_argmax_decomposes_into_per_agent_argmax():
    """Monotonic mixing: the joint action maximising Q_tot is each agent's own greedy action."""
    n, actions, state_dim = 3, 4, 5
    for seed in range(20):
        torch.manual_seed(seed)
        mixer = QMixer(n, state_dim, embed=8, hyper_hidden=16)
        g = torch.Generator().manual_seed(100 + seed)
        q = torch.randn(n, actions, generator=g) * 3  # q[i, a]
        state = torch.randn(1, state_dim, generator=g)
        joint = torch.tensor(list(itertools.product(range(actions), repeat=n)))  # [A^n, n]
        q_joint = q[torch.arange(n), joint]  # [A^n, n]
        with torch.no_grad():
            q_tot = mixer(q_joint, state.expand(len(joint), -1))
        greedy = q.argmax(-1)
        with torch.no_grad():
            q_tot_greedy = mixer(q[torch.arange(n), greedy][None], state)
        assert float(q_tot_greedy) >= float(q_tot.max()) - 1e-5
        assert torch.equal(joint[q_tot.argmax()], greedy)


# ---------------------------------------------------------------- losses by construction


def _const_head(seq: torch.nn.Sequential | torch.nn.Linear, bias: list[float]) -> None:
    """Make a head's output the constant `bias` whatever its input (zero weights on its last layer)."""
    last = seq[-1] if isinstance(seq, torch.nn.Sequential) else seq
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(bias))


def _const_mixer(mixer: QMixer, w1: list[list[float]], b1: list[float], w2: list[float], v: float) -> None:
    """Q_tot(q) = sum_e w2_e * elu(sum_i q_i |w1_ie| + b1_e) + v for every state."""
    _const_head(mixer.hyper_w1, [x for row in w1 for x in row])
    _const_head(mixer.hyper_b1, b1)
    _const_head(mixer.hyper_w2, w2)
    _const_head(mixer.value, [v])


def _elu(x: float) -> float:
    return x if x > 0 else math.exp(x) - 1


def _tiny_nets() -> GMAHNetworks:
    return GMAHNetworks(obs_dim=5, state_dim=3, cells=4, n_agents=2, hidden=8, mixer_embed=2)


def test_high_level_td_loss_matches_the_hand_computed_semi_markov_target():
    torch.manual_seed(0)
    nets, target = _tiny_nets(), _tiny_nets()
    # online: Q_h(o, .) = [0.1, 0.2, 0.3, 0.4]; mixer Q_tot(q) = elu(q_0) + elu(q_1)
    _const_head(nets.high, [0.1, 0.2, 0.3, 0.4])
    _const_mixer(nets.mixer, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [1.0, 1.0], 0.0)
    # target: max_g Q_h' = 2.0 (goal 1, not the goal taken); mixer with a negative w1 entry (|.| applies)
    _const_head(target.high, [0.5, 2.0, -1.0, 1.0])
    _const_mixer(target.mixer, [[1.0, 0.5], [-2.0, 0.0]], [0.0, -10.0], [0.5, 1.0], 0.25)
    q_tot_next = 0.5 * _elu(2.0 * 1 + 2.0 * 2) + 1.0 * _elu(2.0 * 0.5 + 0.0 - 10.0) + 0.25
    q_tot = _elu(0.4) + _elu(0.1)  # goals (3, 0)

    b = 3
    obs, next_obs = torch.randn(b, 2, 5), torch.randn(b, 2, 5)
    state, next_state = torch.randn(b, 3), torch.randn(b, 3)
    goals = torch.tensor([[3, 0]] * b)
    ret = torch.tensor([1.0, 0.5, -0.2])
    discount = torch.tensor([0.9, 0.81, 0.95**3])  # gamma^tau for tau = 1, 2, 3
    done = torch.tensor([False, True, False])
    loss = high_level_td_loss(nets, target, obs, state, goals, ret, discount, next_obs, next_state, done)

    ys = [1.0 + 0.9 * q_tot_next, 0.5, -0.2 + 0.95**3 * q_tot_next]  # done: no bootstrap
    expected = sum((q_tot - y) ** 2 for y in ys) / b
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()  # gradients reach the online nets only
    assert nets.high[-1].bias.grad is not None and nets.high[-1].bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())


def test_low_level_td_loss_intrinsic_reward_and_no_bootstrap_on_reaching():
    torch.manual_seed(0)
    nets, target = _tiny_nets(), _tiny_nets()
    _const_head(nets.low, [0.0, 0.1, 0.2, 0.3, 0.4])  # Q_l(p, g, a) = 0.1 * a
    _const_head(target.low, [1.0, 3.0, -1.0, 2.0, 0.0])  # max_a Q_l' = 3
    gamma, cost = 0.9, 0.05
    pos = torch.tensor([0, 1, 2, 3])
    action = torch.tensor([4, 1, 0, 2])
    next_pos = torch.tensor([1, 1, 2, 3])
    goal = torch.tensor([1, 3, 2, 0])  # reached, not reached, reached, not reached
    loss = low_level_td_loss(nets, target, pos, action, next_pos, goal, gamma, cost)
    q = [0.4, 0.1, 0.0, 0.2]
    y = [1 - cost, -cost + gamma * 3.0, 1 - cost, -cost + gamma * 3.0]
    expected = sum((a - b) ** 2 for a, b in zip(q, y, strict=True)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_low_level_q_is_goal_conditioned():
    nets = _tiny_nets()
    pos, goal = torch.tensor([0, 0]), torch.tensor([1, 2])
    q = nets.low_q(pos, goal)
    assert q.shape == (2, 5)
    assert not torch.allclose(q[0], q[1])  # the goal changes the values
    x = torch.cat([F.one_hot(pos, 4), F.one_hot(goal, 4)], -1).float()
    assert torch.allclose(q, nets.low(x))  # [position one-hot, goal one-hot], in that order


# ---------------------------------------------------------------- soft update


def test_soft_update_copies_keeps_and_mixes():
    torch.manual_seed(0)
    src, tgt = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    s0 = [p.detach().clone() for p in src.parameters()]
    t0 = [p.detach().clone() for p in tgt.parameters()]
    soft_update(tgt, src, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(tgt.parameters(), t0, strict=True))
    soft_update(tgt, src, 0.5)
    assert all(torch.allclose(a, 0.5 * s + 0.5 * t) for a, s, t in zip(tgt.parameters(), s0, t0, strict=True))
    soft_update(tgt, src, 0.25)  # tau weights the SOURCE
    mixed = [0.5 * s + 0.5 * t for s, t in zip(s0, t0, strict=True)]
    assert all(torch.allclose(a, 0.25 * s + 0.75 * m) for a, s, m in zip(tgt.parameters(), s0, mixed, strict=True))
    soft_update(tgt, src, 1.0)
    assert all(torch.equal(a, s) for a, s in zip(tgt.parameters(), s0, strict=True))
    assert all(torch.equal(a, s) for a, s in zip(src.parameters(), s0, strict=True))  # source untouched


# ---------------------------------------------------------------- replay


def test_replay_fifo_capacity_and_overflow():
    buf = TensorReplay(5)
    assert len(buf) == 0
    buf.add(x=torch.arange(3), y=torch.arange(3)[:, None] * 10.0)
    assert len(buf) == 3
    for _ in range(5):  # only filled rows are sampled, keys stay aligned
        s = buf.sample(50, torch.Generator().manual_seed(_))
        assert set(s["x"].tolist()) <= {0, 1, 2}
        assert torch.equal(s["y"][:, 0], s["x"] * 10.0)
    buf.add(x=torch.arange(3, 7), y=torch.arange(3, 7)[:, None] * 10.0)  # 7 rows into 5: 0 and 1 dropped
    assert len(buf) == 5
    assert sorted(buf.data["x"].tolist()) == [2, 3, 4, 5, 6]
    s = buf.sample(200, torch.Generator().manual_seed(0))
    assert set(s["x"].tolist()) == {2, 3, 4, 5, 6}
    buf.add(x=torch.arange(10, 22), y=torch.zeros(12, 1))  # more rows than capacity: the newest 5 survive
    assert len(buf) == 5 and sorted(buf.data["x"].tolist()) == [17, 18, 19, 20, 21]
    buf.add(x=torch.zeros(0, dtype=torch.long), y=torch.zeros(0, 1))
    assert len(buf) == 5
    with pytest.raises(ValueError):
        TensorReplay(0)


# ---------------------------------------------------------------- agent bookkeeping


def _cfg(**kw):
    return OmegaConf.structured(GMAHConfig(name="gmah", **{"hidden": 16, "mixer_embed": 8, **kw}))


def test_play_counts_live_steps_and_every_step_belongs_to_one_option():
    gamma, option_len = 0.5, 3  # gamma^tau is exact in float: tau = -log2(discount)
    env = MultiGrid(48, size=4, agents=2, dirt=3, max_steps=12)
    agent = GMAHAgent(env, _cfg(gamma=gamma, option_len=option_len, buffer_size=100_000), seed=0)
    stats = agent.play(env, seed=3, eps=1.0, learn=True)
    live_steps = int(env.t.sum())
    assert stats["env_steps"] == live_steps < 48 * 12  # some envs finished early: only live steps count
    assert stats["episode_len"] == pytest.approx(live_steps / 48)
    assert len(agent.low_buffer) == live_steps * env.n  # one low-level row per live agent-step
    h = agent.high_buffer.data
    k = len(agent.high_buffer)
    assert k == pytest.approx(stats["options_per_episode"] * 48)  # every option started is stored once
    tau = (-torch.log2(h["discount"][:k])).round().long()
    assert torch.allclose(h["discount"][:k], gamma ** tau.double().float())
    assert tau.min() >= 1 and tau.max() <= option_len
    assert int(tau.sum()) == live_steps  # options tile the episodes: no step lost, none counted twice
    assert int(h["done"][:k].sum()) == 48  # each episode ends exactly one option with done
    # every option that ended early (not done, tau < option_len) ended for a reason: a goal reached or cleaned
    c = env.cells
    own_next = h["next_obs"][:k, :, :c].argmax(-1)  # [k, n]
    dirt_start = h["obs"][:k, :, c : 2 * c].gather(-1, h["goals"][:k, :, None]).squeeze(-1)
    dirt_next = h["next_obs"][:k, :, c : 2 * c].gather(-1, h["goals"][:k, :, None]).squeeze(-1)
    reason = (own_next == h["goals"][:k]).any(1) | ((dirt_start > 0) & (dirt_next == 0)).any(1)
    early = ~h["done"][:k] & (tau < option_len)
    assert early.any() and reason[early].all()


def test_options_end_when_the_subgoal_is_reached():
    """Scripted nets: every agent's subgoal is cell 3 (row 0, col 3) and it always walks east."""
    env = MultiGrid(64, size=4, agents=1, dirt=1, max_steps=8)
    agent = GMAHAgent(env, _cfg(gamma=0.5, option_len=6, buffer_size=10_000), seed=0)
    _const_head(agent.nets.high, [0.0, 0.0, 0.0, 1.0] + [0.0] * 12)
    _const_head(agent.nets.low, [0.0, 0.0, 0.0, 0.0, 1.0])
    agent.play(env, seed=5, eps=0.0, learn=True)
    h, k = agent.high_buffer.data, len(agent.high_buffer)
    tau = (-torch.log2(h["discount"][:k])).round().long()
    start = h["obs"][:k, 0, : env.cells].argmax(-1)
    nxt = h["next_obs"][:k, 0, : env.cells].argmax(-1)
    assert (h["goals"][:k] == 3).all()
    row0 = (start < 4) & ~h["done"][:k]
    assert row0.sum() >= 3  # the layout seed puts some agents on the top row
    # from (0, c) the subgoal is 3 - c steps east (one step, "stay" against the wall, from the goal itself)
    assert torch.equal(tau[row0], (3 - start[row0]).clamp(min=1))
    assert (nxt[row0] == 3).all()
    others = (start >= 4) & ~h["done"][:k]  # never reach cell 3: the option runs its full length
    assert others.any() and (tau[others] == 6).all()


def test_epsilon_schedule_is_linear_then_flat():
    env = MultiGrid(2, size=3, agents=1, dirt=1)
    agent = GMAHAgent(env, _cfg(eps_start=1.0, eps_end=0.1, eps_decay_iters=10), seed=0)
    assert agent.epsilon(0) == pytest.approx(1.0)
    assert agent.epsilon(5) == pytest.approx(0.55)
    assert agent.epsilon(10) == pytest.approx(0.1)
    assert agent.epsilon(50) == pytest.approx(0.1)


def test_update_waits_for_a_batch_then_trains_both_levels():
    env = MultiGrid(16, size=4, agents=2, dirt=3, max_steps=12)
    agent = GMAHAgent(env, _cfg(batch_size=32, updates_per_iter=2, target_tau=0.5), seed=0)
    assert agent.update() == {}  # empty buffers: no step
    agent.play(env, seed=1, eps=1.0, learn=True)
    before = [p.detach().clone() for p in agent.target.parameters()]
    losses = agent.update()
    assert set(losses) == {"loss/high_td", "loss/low_td"} and all(math.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(agent.target.parameters(), before, strict=True))
