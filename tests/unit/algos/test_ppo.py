import pytest
import torch
from omegaconf import OmegaConf

from calmrl.algos import ALGOS
from calmrl.algos.ppo import gae_advantages, trajectory_token_positions
from calmrl.algos.segments import on_last_token
from calmrl.data import Step, Trajectory, build_batch


def reference_gae(sequences, gamma, lam):
    """Plain loop: sequences is a list of (rewards, values) token lists, one per trajectory."""
    out = []
    for rewards, values in sequences:
        adv, running = [0.0] * len(rewards), 0.0
        for t in reversed(range(len(rewards))):
            v_next = values[t + 1] if t + 1 < len(values) else 0.0
            delta = rewards[t] + gamma * v_next - values[t]
            running = delta + gamma * lam * running
            adv[t] = running
        out.append(adv)
    return out


def layout():
    """Two trajectories, rows shuffled: traj 0 has steps with 2 and 1 response tokens, traj 1 one step of 3.

    Row layout (prompt 1 token, right padding to width 5):
      row 0: traj 1 step 0, response cols 1..3
      row 1: traj 0 step 1, response col 2 (prompt of 2 tokens)
      row 2: traj 0 step 0, response cols 1..2
    """
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 1, 1, 0, 0]], dtype=torch.float32)
    traj = torch.tensor([1, 0, 0])
    step = torch.tensor([0, 1, 0])
    return mask, traj, step


def test_token_positions_follow_steps_then_tokens():
    mask, traj, step = layout()
    rows, cols, seq, pos = trajectory_token_positions(mask, traj, step)
    got = {(int(r), int(c)): (int(s), int(p)) for r, c, s, p in zip(rows, cols, seq, pos, strict=True)}
    assert got == {(0, 1): (1, 0), (0, 2): (1, 1), (0, 3): (1, 2), (2, 1): (0, 0), (2, 2): (0, 1), (1, 2): (0, 2)}


def _tokens(mask, traj_values, layout_map):
    t = torch.zeros_like(mask)
    for (r, c), v in zip(layout_map, traj_values, strict=True):
        t[r, c] = v
    return t


# token order per trajectory: traj 0 -> (2,1), (2,2), (1,2); traj 1 -> (0,1), (0,2), (0,3)
ORDER = {0: [(2, 1), (2, 2), (1, 2)], 1: [(0, 1), (0, 2), (0, 3)]}


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.95, 0.0)])
def test_gae_matches_loop_reference_across_step_boundaries(gamma, lam):
    mask, traj, step = layout()
    r = {0: [0.0, 0.5, 1.0], 1: [0.0, 0.0, -1.0]}
    v = {0: [0.2, -0.1, 0.4], 1: [0.3, 0.1, 0.0]}
    rewards = _tokens(mask, r[0] + r[1], ORDER[0] + ORDER[1])
    values = _tokens(mask, v[0] + v[1], ORDER[0] + ORDER[1])
    adv, ret = gae_advantages(rewards, values, mask, traj, step, gamma=gamma, lam=lam)
    ref = reference_gae([(r[0], v[0]), (r[1], v[1])], gamma, lam)
    for k in (0, 1):
        got = [adv[rc].item() for rc in ORDER[k]]
        assert got == pytest.approx(ref[k], abs=1e-6)
        assert [ret[rc].item() for rc in ORDER[k]] == pytest.approx([a + b for a, b in zip(ref[k], v[k], strict=True)])
    assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0)


def test_lambda_one_is_return_minus_value_and_lambda_zero_is_td_error():
    mask, traj, step = layout()
    r = [0.0, 0.5, 1.0, 0.0, 0.0, -1.0]
    v = [0.2, -0.1, 0.4, 0.3, 0.1, 0.0]
    rewards, values = _tokens(mask, r, ORDER[0] + ORDER[1]), _tokens(mask, v, ORDER[0] + ORDER[1])
    gamma = 0.9
    adv1, _ = gae_advantages(rewards, values, mask, traj, step, gamma=gamma, lam=1.0)
    # traj 0 returns-to-go: [0 + .9*.5 + .81*1, .5 + .9*1, 1] = [1.26, 1.4, 1.0]
    assert [adv1[rc].item() for rc in ORDER[0]] == pytest.approx([1.26 - 0.2, 1.4 + 0.1, 1.0 - 0.4])
    adv0, _ = gae_advantages(rewards, values, mask, traj, step, gamma=gamma, lam=0.0)
    # delta = r + gamma V_next - V: [0 + .9*-.1 - .2, .5 + .9*.4 + .1, 1 + 0 - .4]
    assert [adv0[rc].item() for rc in ORDER[0]] == pytest.approx([-0.29, 0.96, 0.6])


def test_step_reward_lands_on_last_response_token():
    mask, _, _ = layout()
    out = on_last_token(torch.tensor([1.0, 2.0, 3.0]), mask)
    assert out[0].tolist() == [0, 0, 0, 1.0, 0] and out[1].tolist() == [0, 0, 2.0, 0, 0]
    assert out[2].tolist() == [0, 0, 3.0, 0, 0]


def test_registered_ppo_fills_returns_and_needs_values():
    steps = [Step([1], [2, 3], [-0.1, -0.2], "a", "a", 0.0, "s0"), Step([1, 4], [5], [-0.3], "b", "b", 1.0, "s1")]
    batch = build_batch([Trajectory(uid=0, seed=0, task="t", steps=steps)], pad_token_id=0)
    cfg = OmegaConf.create({"gamma": 1.0, "lam": 1.0})
    fn = ALGOS.get("ppo")
    assert fn.requires == {"values"}
    with pytest.raises(ValueError, match="critic values"):
        fn(batch, cfg)
    batch.values = torch.zeros_like(batch.response_mask)
    adv = fn(batch, cfg)
    # gamma = lam = 1, V = 0: every token's advantage is the reward-to-go of the trajectory = 1
    assert adv[batch.response_mask.bool()].tolist() == [1.0, 1.0, 1.0]
    assert torch.equal(batch.returns, adv)


def verl_agent_ppo(scores, values, mask, gamma, lam):
    """verl-agent's PPO advantages in our own words: each step row is a sequence of its own whose reward, on its
    last valid token, is its score (`token_level_rewards`); `compute_gae_advantage_return` (verl/trainer/ppo/
    core_algos.py of xlan156/verl-agent) runs GAE along the row with V = 0 past the end, returns = A + V, then
    whitens A over the response tokens (`masked_whiten`: unbiased var, rsqrt(var + 1e-8))."""
    n, length = mask.shape
    adv = torch.zeros(n, length)
    for i in range(n):
        cols = [t for t in range(length) if mask[i, t]]
        running = 0.0
        for k in reversed(range(len(cols))):
            t = cols[k]
            reward = scores[i] if k == len(cols) - 1 else 0.0
            next_value = values[i, cols[k + 1]] if k + 1 < len(cols) else 0.0
            running = reward + gamma * next_value - values[i, t] + gamma * lam * running
            adv[i, t] = running
    returns = adv + values * mask
    picked = adv[mask.bool()]
    mean, var = picked.mean(), picked.var(unbiased=True)
    return (adv - mean) * torch.rsqrt(var + 1e-8) * mask, returns


@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (0.95, 0.9)])
def test_sequence_step_is_verl_agents_ppo(make_trajectory, gamma, lam):
    from calmrl.data import apply_penalty_rule
    from calmrl.schemas.algo import PPOConfig

    g = torch.Generator().manual_seed(4)
    trajs = [
        make_trajectory(0, [0.0, 0.0, 1.0], response_len=3, invalid=(1,)),
        make_trajectory(0, [0.0, 0.0], response_len=2),
        make_trajectory(1, [1.0], response_len=4, invalid=(0,)),
    ]
    batch = apply_penalty_rule(build_batch(trajs, pad_token_id=0), "row")
    batch.values = torch.randn(batch.response_mask.shape, generator=g) * batch.response_mask
    cfg = OmegaConf.merge(
        OmegaConf.structured(PPOConfig),
        {
            "name": "ppo",
            "gamma": gamma,
            "lam": lam,
            "sequence": "step",
            "whiten_advantages": True,
            "penalty_rule": "row",
        },
    )
    adv = ALGOS.get("ppo")(batch, cfg)
    scores = (batch.episode_return - batch.penalty).tolist()  # (1, 0.9, 1, 0, 0, 0.9)
    assert scores == pytest.approx([1.0, 0.9, 1.0, 0.0, 0.0, 0.9])
    expected_adv, expected_ret = verl_agent_ppo(scores, batch.values, batch.response_mask, gamma, lam)
    assert torch.allclose(adv, expected_adv, atol=1e-5)
    assert torch.allclose(batch.returns, expected_ret, atol=1e-5)


def test_penalty_rule_row_needs_sequence_step():
    from hydra import compose, initialize_config_dir

    from calmrl.cli import CONFIG_DIR
    from calmrl.config import validate
    from calmrl.errors import ConfigError

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["run_name=t", "algo=ppo", "algo.penalty_rule=row"])
        with pytest.raises(ConfigError, match="algo.sequence=step"):
            validate(cfg)
        validate(compose("train", overrides=["run_name=t", "algo=ppo", "algo.penalty_rule=row", "algo.sequence=step"]))
