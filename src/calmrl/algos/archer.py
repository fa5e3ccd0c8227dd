"""ArCHer — hierarchical multi-turn actor-critic (Zhou et al., 2024, "ArCHer: Training Language Model
Agents via Hierarchical Multi-Turn RL", ICML 2024; reference code YifeiZhou02/ArCHer).

High level, one transition per turn: an off-policy utterance-level critic on (state text, utterance) with
twin Q and twin V heads and soft-updated target networks (see `calmrl.learners.archer_critic`), trained
from a FIFO replay buffer of text transitions (s, a, r, s', done):

    y_Qi = r + gamma * (1 - done) * Vbar_i(s'),   y_Vi = Qbar_i(s, a'),  a' ~ pi(. | s)
    gamma = 0.95, tau = 0.1; `critic_steps` minibatches of `critic_batch_size` per iteration.

Each twin regresses onto its own twin's target, as the reference's `ArcherTrainer.critic_loss` does; the
min over twins appears only in the advantage below.

Low level, the token-level actor: REINFORCE on the log-probs of every token of utterance a with the
utterance-level advantage of the current critic,

    A(s, a) = min(Q_1, Q_2)(s, a) - min(V_1, V_2)(s)           (the same A on every token of a)

so Q == V gives A = 0 and no actor gradient. The actor trains on this iteration's on-policy turns (the
reference re-samples actions at buffer states; here the rollout's own samples are those actions), for
`ppo_epochs` passes (the paper's 3 actor epochs) with `loss: reinforce`; `critic_warmup_iters` iterations
train only the critic (20 in the paper).

A turn's state is the prompt the policy saw (the decoded prompt tokens: task, history, observation),
its next state the next turn's prompt; a trajectory's last turn is terminal (done = 1), also when the
episode was cut at `env.max_steps` (the rollout records no prompt after it). The reward is the step's
reward after shaping (`batch.rewards`), so shapers compose with ArCHer.

The critic is state the on-policy `advantage_fn(batch)` shape does not have, so `algo=archer` registers
`ArcherState` (a `calmrl.algos.registry.AlgoState`): the trainer builds it once, lets it see each iteration
(`begin`: add transitions, draw the critic's minibatches; the policy samples a' at their states; `end`: train
the critic, score the batch's turns) and checkpoints its tensors. Under cluster=ray it lives on a worker.
"""

from __future__ import annotations

from pathlib import Path

import torch

from calmrl.algos.registry import observe, register
from calmrl.algos.segments import to_tokens
from calmrl.learners.archer_critic import (
    ReplayBuffer,
    Transition,
    UtteranceCritic,
    build_tiny_encoder,
    critic_losses,
    critic_targets,
    make_target,
    soft_update,
)


def archer_advantages(q1: torch.Tensor, q2: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """Utterance-level advantage min(Q1, Q2) - min(V1, V2). All [N]; returns [N]."""
    return torch.minimum(q1, q2) - torch.minimum(v1, v2)


def turn_transitions(trajectories, rewards: torch.Tensor, decode) -> list[Transition]:
    """One transition per step, in `build_batch` row order (trajectory by trajectory, steps in order).

    rewards: [N] the rows' (shaped) step rewards; decode: token ids -> text (the policy's prompt text).
    """
    out: list[Transition] = []
    for traj in trajectories:
        states = [decode(s.prompt_ids) for s in traj.steps]
        for i, step in enumerate(traj.steps):
            last = i == len(traj.steps) - 1
            out.append(Transition(states[i], step.response_text, 0.0, "" if last else states[i + 1], last))
    if len(out) != rewards.numel():
        raise ValueError(
            f"{len(out)} turns but {rewards.numel()} batch rows: the batch must come from these trajectories"
        )
    for t, r in zip(out, rewards.tolist(), strict=True):
        t.reward = float(r)
    return out


class ArcherState:
    """ArCHer's critic, its target copy, optimizer and replay buffer, and the advantages of the last batch."""

    holds_model = True  # the critic: under cluster=ray the state lives on a worker of its own

    def __init__(self, cfg, tokenizer=None, policy_path=None, run_dir=None, device="cpu", seed: int = 0, **_context):
        self.cfg = cfg
        self.tokenizer = tokenizer  # the policy's: turns prompt ids back into the state text
        if cfg.get("encoder_path"):
            path = Path(cfg.encoder_path).expanduser()
        else:
            if tokenizer is None or run_dir is None:
                raise ValueError("the tiny ArCHer encoder needs the policy tokenizer and a run directory")
            path = build_tiny_encoder(
                Path(run_dir) / "archer_encoder", tokenizer, int(cfg.encoder_hidden_size), int(cfg.encoder_layers), seed
            )
        self.critic = UtteranceCritic.from_pretrained(path, int(cfg.max_length)).to(device)
        self.target = make_target(self.critic)
        # plain Adam, no weight decay: the reference's critic optimizer
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=float(cfg.critic_lr))
        self.buffer = ReplayBuffer(int(cfg.replay_capacity))
        self.generator = torch.Generator().manual_seed(int(seed))
        self.row_advantages: torch.Tensor | None = None  # [N] for the batch last given to `begin`
        self.turns: list[Transition] = []
        self.minibatches: list[list[Transition]] = []

    # ------------------------------------------------------------------ one iteration (AlgoState's two halves)
    def begin(self, trajectories, batch, it: int) -> list[list[str]]:
        """Store the batch's turns and draw this iteration's `critic_steps` minibatches from the buffer; returns
        each minibatch's states, at which the V targets need a fresh action a' of the current policy (nothing to
        ask under v_target_action=buffer)."""
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
        self.turns = turn_transitions(trajectories, batch.rewards, decode)
        self.buffer.add(self.turns)
        size = int(self.cfg.critic_batch_size)
        # the buffer draws come from the state's own generator, the policy's samples from the run's stream: drawing
        # every minibatch first leaves both sequences as they are when each step samples in turn
        self.minibatches = [self.buffer.sample(size, self.generator) for _ in range(int(self.cfg.critic_steps))]
        if str(self.cfg.v_target_action) != "policy":
            return []
        return [[t.state for t in minibatch] for minibatch in self.minibatches]

    def end(self, responses: list[list[str]] | None) -> dict[str, float]:
        """Train the critic on the minibatches `begin` drew (a' = `responses`, one list per minibatch; empty or
        None: the stored actions), then score the batch's turns with the updated critic."""
        if responses and len(responses) != len(self.minibatches):
            raise ValueError(f"{len(responses)} response lists for {len(self.minibatches)} critic minibatches")
        totals: dict[str, float] = {}
        done_steps = 0
        for k, minibatch in enumerate(self.minibatches):
            metrics = self.critic_step(minibatch, responses[k] if responses else None)
            if metrics is None:
                continue
            done_steps += 1
            for key, v in metrics.items():
                totals[key] = totals.get(key, 0.0) + v
        out = {k: v / max(done_steps, 1) for k, v in totals.items()}
        self.row_advantages = self.score([t.state for t in self.turns], [t.action for t in self.turns])
        out["critic/replay_size"] = float(len(self.buffer))
        out["critic/steps"] = float(done_steps)
        return out

    def observe(self, trajectories, batch, it: int, sample=None) -> dict[str, float]:
        """Both halves in one call: `sample(prompts) -> texts` answers the V targets' questions to the policy
        (None: the stored actions stand in for a')."""
        if sample is None:
            self.begin(trajectories, batch, it)
            return self.end(None)
        return observe(self, trajectories, batch, it, sample)

    def critic_step(self, batch: list[Transition], pi_actions: list[str] | None = None) -> dict[str, float] | None:
        """One optimizer step on the twin Q/V losses, then the soft target update. `pi_actions`: a' at the batch's
        states (None: the stored actions). None if skipped."""
        states = [t.state for t in batch]
        actions = [t.action for t in batch]
        device = next(self.critic.parameters()).device
        reward = torch.tensor([t.reward for t in batch], dtype=torch.float32, device=device)
        done = torch.tensor([t.done for t in batch], dtype=torch.float32, device=device)
        with torch.no_grad():
            self.target.eval()
            tq1, tq2, _, _ = self.target(states, pi_actions if pi_actions is not None else actions)
            nv1, nv2 = self.target.values([t.next_state for t in batch])
            targets = critic_targets(reward, done, nv1, nv2, tq1, tq2, float(self.cfg.gamma))
        self.critic.train()
        q1, q2, v1, v2 = self.critic(states, actions)
        q_loss, v_loss = critic_losses(q1, q2, v1, v2, *targets)
        loss = q_loss + v_loss
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return None
        loss.backward()
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), float(self.cfg.critic_max_grad_norm))
        )
        if not torch.isfinite(torch.tensor(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        soft_update(self.target, self.critic, float(self.cfg.tau))
        return {
            "critic/q_loss": float(q_loss.detach()),
            "critic/v_loss": float(v_loss.detach()),
            "critic/q_mean": float(torch.minimum(q1, q2).mean().detach()),
            "critic/v_mean": float(torch.minimum(v1, v2).mean().detach()),  # the advantage's baseline
            "critic/grad_norm": grad_norm,
        }

    @torch.no_grad()
    def score(self, states: list[str], actions: list[str]) -> torch.Tensor:
        """A(s, a) = min Q - min V from the current critic (eval mode), in chunks: [len(states)] on CPU."""
        self.critic.eval()
        size = int(self.cfg.critic_batch_size)
        parts = [
            archer_advantages(*self.critic(states[i : i + size], actions[i : i + size])).cpu()
            for i in range(0, len(states), size)
        ]
        return torch.cat(parts) if parts else torch.zeros(0)

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"critic.{k}": v for k, v in self.critic.state_dict().items()}
        out.update({f"target.{k}": v for k, v in self.target.state_dict().items()})
        for i, st in self.optimizer.state_dict()["state"].items():
            out.update({f"opt.{i}.{k}": torch.as_tensor(v) for k, v in st.items()})
        out.update({f"buffer.{k}": v for k, v in self.buffer.state_dict().items()})
        out["rng"] = self.generator.get_state()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

        self.critic.load_state_dict(part("critic."))
        self.target.load_state_dict(part("target."))
        opt: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in part("opt.").items():
            i, name = key.split(".", 1)
            opt.setdefault(int(i), {})[name] = v
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": opt, "param_groups": groups})
        self.buffer.load_state_dict(part("buffer."))
        self.generator.set_state(state["rng"])


@register("archer", state=ArcherState)
def archer(batch, cfg, state: ArcherState | None = None) -> torch.Tensor:
    """advantages [N, L]: each turn's utterance-level advantage min Q - min V on every response token."""
    if state is None or state.row_advantages is None:
        raise ValueError("archer needs its critic: the trainer builds ArcherState and lets it observe the batch first")
    if state.row_advantages.numel() != len(batch):
        raise ValueError(f"the critic scored {state.row_advantages.numel()} turns but the batch has {len(batch)} rows")
    return to_tokens(state.row_advantages, batch.response_mask)
