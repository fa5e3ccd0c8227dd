import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from calmrl.algos import ALGOS
from calmrl.algos.archer import ArcherState, archer_advantages, turn_transitions
from calmrl.data import Step, Trajectory, build_batch
from calmrl.learners.archer_critic import ReplayBuffer, Transition, critic_losses, critic_targets, soft_update


def cfg(**over):
    base = {
        "gamma": 0.95,
        "tau": 0.1,
        "encoder_path": None,
        "encoder_hidden_size": 32,
        "encoder_layers": 1,
        "max_length": 64,
        "critic_lr": 1e-3,
        "critic_steps": 0,
        "critic_batch_size": 8,
        "critic_max_grad_norm": 1.0,
        "critic_warmup_iters": 0,
        "replay_capacity": 100,
        "v_target_action": "buffer",
        "loss": "reinforce",
        "lr": 1e-3,
        "clip_ratio": 0.2,
        "kl_coef": 0.0,
        "ppo_epochs": 1,
        "minibatch_size": 64,
    }
    return OmegaConf.create({**base, **over})


@pytest.fixture()
def state_factory(tiny_policy_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_policy_dir)

    def make(**over):
        return ArcherState(cfg(**over), tokenizer=tok, run_dir=tmp_path, seed=0)

    return make, tok


def gridworld_trajectories(tok):
    """Two trajectories (2 turns and 1 turn) whose prompts and responses are real tokenizer text."""

    def step(prompt, response, reward):
        ids = tok(prompt, add_special_tokens=False).input_ids
        resp = tok(response, add_special_tokens=False).input_ids
        return Step(ids, resp, [-0.5] * len(resp), response, response, reward, prompt)

    a = Trajectory(0, 0, "t", [step("goal north .", " north", 0.0), step("goal east .", " east", 1.0)])
    b = Trajectory(0, 1, "t", [step("goal north .", " south", -0.1)])
    return [a, b]


# ---------------------------------------------------------------- pure pieces, hand-checked
def test_advantage_is_min_q_minus_min_v():
    q1, q2 = torch.tensor([1.0, 3.0, -1.0]), torch.tensor([2.0, 0.5, -2.0])
    v1, v2 = torch.tensor([0.5, 1.0, 0.0]), torch.tensor([0.25, 2.0, -3.0])
    assert archer_advantages(q1, q2, v1, v2).tolist() == [0.75, -0.5, 1.0]
    # Q == V (both twins) -> exactly zero
    assert torch.equal(archer_advantages(q1, q2, q1, q2), torch.zeros(3))


def test_critic_targets_hand_checked():
    reward, done = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    next_v1, next_v2 = torch.tensor([2.0, 3.0]), torch.tensor([4.0, 5.0])
    pi_q1, pi_q2 = torch.tensor([1.0, -1.0]), torch.tensor([0.5, 2.0])
    y_q1, y_q2, y_v1, y_v2 = critic_targets(reward, done, next_v1, next_v2, pi_q1, pi_q2, gamma=0.9)
    # y_Qi = r + gamma (1 - done) Vbar_i(s'); the done transition keeps only its reward
    assert y_q1.tolist() == pytest.approx([1.0 + 0.9 * 2.0, 0.5])
    assert y_q2.tolist() == pytest.approx([1.0 + 0.9 * 4.0, 0.5])
    # y_Vi = Qbar_i(s, a~pi), each twin its own: no min (that would be [0.5, -1.0] for both)
    assert y_v1.tolist() == [1.0, -1.0] and y_v2.tolist() == [0.5, 2.0]


def test_v_twins_regress_onto_their_own_target_q_hand_checked():
    """Distinct twins (Qbar_1 != Qbar_2): the V loss of the reference rule, worked by hand; the old
    min(Qbar_1, Qbar_2) target for both V twins gives a different number, so this fails on it."""
    reward, done = torch.tensor([0.0, -1.0]), torch.tensor([1.0, 0.0])
    next_v1, next_v2 = torch.tensor([9.0, 2.0]), torch.tensor([9.0, -2.0])
    pi_q1, pi_q2 = torch.tensor([1.0, -1.0]), torch.tensor([0.5, 2.0])
    q1, q2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    v1, v2 = torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0])
    q_loss, v_loss = critic_losses(q1, q2, v1, v2, *critic_targets(reward, done, next_v1, next_v2, pi_q1, pi_q2, 0.5))
    # y_Q1 = [0, -1 + 0.5 * 2] = [0, 0], y_Q2 = [0, -1 + 0.5 * -2] = [0, -2]   (row 0 is done: Vbar(s') unused)
    # q_loss = mean([0, 0]) + mean([1, 4]) = 2.5
    assert float(q_loss) == pytest.approx(2.5)
    # y_V1 = Qbar_1 = [1, -1], y_V2 = Qbar_2 = [0.5, 2]
    # v_loss = mean([1, 1]) + mean([0.25, 1]) = 1 + 0.625 = 1.625
    assert float(v_loss) == pytest.approx(1.625)
    # the old rule, y_V = min = [0.5, -1] for both: mean([0.25, 1]) + mean([0.25, 4]) = 0.625 + 2.125 = 2.75
    assert float(v_loss) != pytest.approx(2.75)


def official_critic_loss(q1, q2, v1, v2, bar_q1_pi, bar_q2_pi, bar_v1_next, bar_v2_next, reward, done, gamma):
    """Our own transcription of the authors' `ArcherTrainer.critic_loss` (YifeiZhou02/ArCHer,
    archer/algorithms/archer/trainer.py), on tensors instead of text: all inputs [B], returns four scalars.

    Online heads: q1, q2 at the buffer's (s, a); v1, v2 at s. Target critic: its Q twins at (s, a'), a' a
    fresh policy sample, and its V twins at s'. Q twin k fits reward plus the discounted target V twin k at
    s' (dropped where done); V twin k fits target Q twin k at (s, a'). Each is a batch-mean squared error
    (torch's MSELoss), and the critic steps on their plain sum.
    """
    bootstrap = gamma * (1 - done)
    fit_q1, fit_q2 = reward + bootstrap * bar_v1_next, reward + bootstrap * bar_v2_next
    sq = lambda pred, goal: ((pred - goal) ** 2).mean()  # noqa: E731
    return sq(q1, fit_q1), sq(q2, fit_q2), sq(v1, bar_q1_pi), sq(v2, bar_q2_pi)


def test_critic_loss_matches_the_official_transcription_on_random_inputs():
    gen = torch.Generator().manual_seed(1234)
    b = 64
    heads = [torch.randn(b, generator=gen) * 3 for _ in range(8)]  # q1 q2 v1 v2, Qbar_1/2(s, a'), Vbar_1/2(s')
    reward = torch.randn(b, generator=gen)
    done = (torch.rand(b, generator=gen) < 0.3).float()
    q1, q2, v1, v2, bq1, bq2, bv1, bv2 = heads
    assert (bq1 - bq2).abs().min() > 0  # distinct twins everywhere, so a min in y_V would show
    ref = official_critic_loss(q1, q2, v1, v2, bq1, bq2, bv1, bv2, reward, done, gamma=0.95)
    q_loss, v_loss = critic_losses(q1, q2, v1, v2, *critic_targets(reward, done, bv1, bv2, bq1, bq2, gamma=0.95))
    assert float(q_loss) == pytest.approx(float(ref[0] + ref[1]), rel=1e-6, abs=1e-6)
    assert float(v_loss) == pytest.approx(float(ref[2] + ref[3]), rel=1e-6, abs=1e-6)


def test_critic_step_loss_matches_the_official_transcription(state_factory):
    """The wiring, not just the formula: `critic_step`'s reported losses equal the transcription fed with the
    critic's and target's own outputs (target Q at the sampled a', target V at s'), and the target then moves
    by tau."""
    make, _ = state_factory
    state = make(gamma=0.95, tau=0.1)
    batch = [
        Transition("goal north .", " north", 0.0, "goal east .", False),
        Transition("goal east .", " east", 1.0, "", True),
        Transition("goal north .", " south", -0.1, "goal west .", False),
        Transition("goal west .", " west", -1.0, "goal north .", False),
    ]
    states, actions = [t.state for t in batch], [t.action for t in batch]
    pi_actions = [" up", " down", " left", " right"]  # a' at the minibatch's own states

    with torch.no_grad():
        state.critic.train()
        q1, q2, v1, v2 = state.critic(states, actions)
        bq1, bq2, _, _ = state.target(states, pi_actions)
        bv1, bv2 = state.target.values([t.next_state for t in batch])
    assert (bq1 - bq2).abs().min() > 1e-4  # the twins differ: the old min rule would give another v_loss
    reward = torch.tensor([t.reward for t in batch])
    done = torch.tensor([float(t.done) for t in batch])
    ref = official_critic_loss(q1, q2, v1, v2, bq1, bq2, bv1, bv2, reward, done, gamma=0.95)
    old_rule_v = ((v1 - torch.minimum(bq1, bq2)) ** 2).mean() + ((v2 - torch.minimum(bq1, bq2)) ** 2).mean()
    assert abs(float(old_rule_v) - float(ref[2] + ref[3])) > 1e-4

    before = {k: v.clone() for k, v in state.target.state_dict().items()}
    metrics = state.critic_step(batch, pi_actions)
    assert metrics["critic/q_loss"] == pytest.approx(float(ref[0] + ref[1]), rel=1e-6, abs=1e-6)
    assert metrics["critic/v_loss"] == pytest.approx(float(ref[2] + ref[3]), rel=1e-6, abs=1e-6)
    for k, v in state.target.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.9 * before[k] + 0.1 * state.critic.state_dict()[k], atol=1e-7)


def test_soft_update_limits_and_mixture():
    torch.manual_seed(0)
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    soft_update(target, source, tau=0.0)
    assert all(torch.equal(target.state_dict()[k], before[k]) for k in before)  # tau = 0 keeps
    soft_update(target, source, tau=0.1)
    for k, v in target.state_dict().items():
        assert torch.allclose(v, 0.1 * source.state_dict()[k] + 0.9 * before[k])
    soft_update(target, source, tau=1.0)
    assert all(torch.equal(target.state_dict()[k], source.state_dict()[k]) for k in before)  # tau = 1 copies
    with pytest.raises(ValueError, match="tau"):
        soft_update(target, source, tau=1.5)


def test_replay_buffer_is_fifo_with_capacity_and_round_trips():
    buf = ReplayBuffer(capacity=3)
    items = [Transition(f"s{i} ü", f"a{i}", float(i), "" if i == 4 else f"s{i + 1}", i == 4) for i in range(5)]
    buf.add(items[:2])
    assert len(buf) == 2 and [t.state for t in buf.ordered()] == ["s0 ü", "s1 ü"]
    buf.add(items[2:])
    assert len(buf) == 3
    assert [t.action for t in buf.ordered()] == ["a2", "a3", "a4"]  # the two oldest were replaced
    again = ReplayBuffer(capacity=1)
    again.load_state_dict(buf.state_dict())
    assert again.capacity == 3 and again.ordered() == buf.ordered()
    again.add([items[0]])  # the oldest (a2) goes next
    assert [t.action for t in again.ordered()] == ["a3", "a4", "a0"]
    assert all(t in items for t in buf.sample(10, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(2).sample(1)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)


def test_turn_transitions_link_states_and_mark_the_last_turn_done(state_factory):
    _, tok = state_factory
    trajs = gridworld_trajectories(tok)
    batch = build_batch(trajs, tok.pad_token_id)
    turns = turn_transitions(trajs, batch.rewards, lambda ids: tok.decode(ids))
    assert [(t.state, t.action, t.reward, t.next_state, t.done) for t in turns] == [
        ("goal north .", " north", 0.0, "goal east .", False),
        ("goal east .", " east", 1.0, "", True),
        ("goal north .", " south", pytest.approx(-0.1), "", True),
    ]
    with pytest.raises(ValueError, match="batch rows"):
        turn_transitions(trajs, batch.rewards[:2], lambda ids: tok.decode(ids))


# ---------------------------------------------------------------- the METHODS.md invariant: Q == V -> no actor gradient
class FirstHalf(nn.Module):
    """Feeds only e(s) (the first half of [e(s), e(a)]) to a V head: turns a Q head into that V head."""

    def __init__(self, v_head: nn.Module, width: int):
        super().__init__()
        self.v_head, self.width = v_head, width

    def forward(self, sa):
        return self.v_head(sa[:, : self.width])


def test_q_equal_v_gives_zero_advantages_and_zero_actor_gradient(state_factory, tiny_policy_dir):
    from calmrl.learners.torch import TorchLearner
    from calmrl.policy import load_policy

    make, tok = state_factory
    state = make()
    critic = state.critic
    critic.q1, critic.q2 = FirstHalf(critic.v1, 32), FirstHalf(critic.v2, 32)
    trajs = gridworld_trajectories(tok)
    batch = build_batch(trajs, tok.pad_token_id)
    metrics = state.observe(trajs, batch, it=1)
    assert metrics["critic/replay_size"] == 3.0 and metrics["critic/steps"] == 0.0
    batch.advantages = ALGOS.get("archer")(batch, state.cfg, state=state)
    assert torch.equal(batch.advantages, torch.zeros_like(batch.response_mask))

    model, _ = load_policy(tiny_policy_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner = TorchLearner(
        model, state.cfg, OmegaConf.create({"micro_batch_size": 8, "max_grad_norm": 1.0, "weight_decay": 0.0})
    )
    update = learner.update(batch)
    assert update["loss/optimizer_steps"] == 1.0 and update["loss/grad_norm"] == 0.0
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_nonzero_advantage_moves_the_policy(state_factory, tiny_policy_dir):
    """The converse of the test above, so it cannot pass vacuously: a real critic's A != 0 changes the weights."""
    from calmrl.learners.torch import TorchLearner
    from calmrl.policy import load_policy

    make, tok = state_factory
    state = make()
    trajs = gridworld_trajectories(tok)
    batch = build_batch(trajs, tok.pad_token_id)
    state.observe(trajs, batch, it=1)
    batch.advantages = ALGOS.get("archer")(batch, state.cfg, state=state)
    assert batch.advantages.abs().sum() > 0
    model, _ = load_policy(tiny_policy_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    TorchLearner(
        model, state.cfg, OmegaConf.create({"micro_batch_size": 8, "max_grad_norm": 1.0, "weight_decay": 0.0})
    ).update(batch)
    assert any(not torch.equal(model.state_dict()[k], before[k]) for k in before)


# ---------------------------------------------------------------- the critic learns, samples pi for y_V, resumes
def test_critic_learns_which_utterance_is_rewarded(state_factory):
    make, _ = state_factory
    state = make(critic_lr=1e-2, critic_batch_size=8, tau=0.5)
    state.buffer.add(
        [Transition("goal north .", " north", 1.0, "", True), Transition("goal north .", " south", 0.0, "", True)]
    )
    for _ in range(40):
        metrics = state.critic_step(state.buffer.sample(8, state.generator))
    assert metrics["critic/q_loss"] < 0.02
    adv = state.score(["goal north .", "goal north ."], [" north", " south"])
    # terminal transitions: Q -> r, while V_i(s) fits Qbar_i at both stored actions (~0.5): A(north) - A(south) ~ 1
    assert adv[0] - adv[1] > 0.8


def test_v_target_uses_a_fresh_policy_sample(state_factory):
    make, tok = state_factory
    state = make(critic_steps=2, critic_batch_size=4, v_target_action="policy")
    trajs = gridworld_trajectories(tok)
    batch = build_batch(trajs, tok.pad_token_id)
    calls = []

    def sample(prompts):
        calls.append(list(prompts))
        return [" west"] * len(prompts)

    metrics = state.observe(trajs, batch, it=1, sample=sample)
    assert metrics["critic/steps"] == 2.0 and len(calls) == 2
    assert all(p in {"goal north .", "goal east ."} for call in calls for p in call) and len(calls[0]) == 4
    state_buffer = make(critic_steps=1, critic_batch_size=4, v_target_action="buffer")
    state_buffer.observe(trajs, batch, it=1, sample=sample)
    assert len(calls) == 2  # v_target_action=buffer never generates


def test_resume_restores_critic_target_optimizer_buffer_and_rng(state_factory, tmp_path):
    from safetensors.torch import load_file, save_file

    make, tok = state_factory
    state = make(critic_steps=3, critic_batch_size=4)
    trajs = gridworld_trajectories(tok)
    batch = build_batch(trajs, tok.pad_token_id)
    state.observe(trajs, batch, it=1)
    sd = state.state_dict()
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in sd.items()}, tmp_path / "s.safetensors")

    fresh = make(critic_steps=3, critic_batch_size=4)
    assert not torch.equal(fresh.critic.q1[0].weight, state.critic.q1[0].weight)
    fresh.load_state_dict(load_file(tmp_path / "s.safetensors"))
    for a, b in ((fresh.critic, state.critic), (fresh.target, state.target)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert fresh.buffer.ordered() == state.buffer.ordered()
    # the next iteration continues identically: same minibatches (rng), same Adam moments, same scores
    m1, m2 = state.observe(trajs, batch, it=2), fresh.observe(trajs, batch, it=2)
    assert m1 == m2
    assert torch.equal(state.row_advantages, fresh.row_advantages)


def test_registered_archer_needs_its_state(state_factory):
    _, tok = state_factory
    batch = build_batch(gridworld_trajectories(tok), tok.pad_token_id)
    fn = ALGOS.get("archer")
    assert fn.state is ArcherState and not fn.requires
    with pytest.raises(ValueError, match="ArcherState"):
        fn(batch, cfg())
