"""ArCHer's utterance-level critic (Zhou et al., 2024, "ArCHer: Training Language Model Agents via
Hierarchical Multi-Turn RL"; reference code YifeiZhou02/ArCHer, `DoubleCritic` and `ArcherTrainer`).

The critic reads text: a state s (the prompt the policy saw at a turn) and an utterance a (its whole
response). One encoder (any Hugging Face encoder, loaded by path through `AutoModel`) embeds s and a
separately (mean of the last hidden states over the attention mask; the reference takes the encoder's
pooler output); twin Q heads read [e(s), e(a)] and twin V heads read e(s), as the reference's DoubleCritic
does. Targets use a target copy (bar) of the whole critic, soft-updated after every critic step:

    y_Qi = r + gamma * (1 - done) * Vbar_i(s')    (Q_i regresses onto its own twin's target V)
    y_Vi = Qbar_i(s, a'),  a' ~ pi(. | s)          (V_i onto its own twin's target Q: no min here)
    L    = sum_i MSE(Q_i(s, a), y_Qi) + MSE(V_i(s), y_Vi)
    theta_bar <- tau * theta + (1 - tau) * theta_bar     (tau = 0.1)

The pairing is the reference's (`ArcherTrainer.critic_loss` in archer/algorithms/archer/trainer.py): the
twins are trained independently and the pessimistic min is taken only in the actor's advantage
(`calmrl.algos.archer.archer_advantages`). Taking the min inside y_V as well would pull both V twins
towards the lower Qbar, bias V low and so push every advantage min Q - min V up. a' is a fresh policy
sample (`v_target_action=policy`, as the reference) or the stored action (`=buffer`).

Transitions are text and live in a FIFO replay buffer (capacity 1e5 in the paper), sampled uniformly.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


# ---------------------------------------------------------------- the encoder
def build_tiny_encoder(out_dir: str | Path, tokenizer, hidden_size: int = 32, num_layers: int = 1, seed: int = 0):
    """Write (once) a small random-init BERT encoder with `tokenizer` into `out_dir`; returns the directory.

    It is loaded back through `UtteranceCritic.from_pretrained`, the same path a real encoder
    (e.g. `encoder_path=/models/roberta-base`) takes. The vocabulary is the given tokenizer's (the policy's).
    """
    from transformers import BertConfig, BertModel

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors")):
        return out_dir
    heads = hidden_size // 16 if hidden_size % 16 == 0 else 1  # the head count must divide the width
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id or 0,
        hidden_dropout_prob=0.0,  # deterministic values: a critic this small does not need dropout
        attention_probs_dropout_prob=0.0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(config)  # with its pooler, as AutoModel builds it: the load then finds every weight
    # written aside and renamed, so a killed build never leaves a half-written encoder to be reused
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def _mlp(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )


class UtteranceCritic(nn.Module):
    """Twin Q(s, a) and twin V(s) heads on one text encoder."""

    def __init__(self, encoder: nn.Module, tokenizer, hidden_size: int, max_length: int = 256):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.q1, self.q2 = _mlp(2 * hidden_size, hidden_size), _mlp(2 * hidden_size, hidden_size)
        self.v1, self.v2 = _mlp(hidden_size, hidden_size), _mlp(hidden_size, hidden_size)

    @classmethod
    def from_pretrained(cls, path, max_length: int = 256) -> UtteranceCritic:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "right"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        encoder = AutoModel.from_pretrained(path, use_safetensors=True)
        return cls(encoder, tokenizer, encoder.config.hidden_size, max_length)

    def embed(self, texts: list[str], keep_end: bool = False) -> torch.Tensor:
        """Mean-pooled last hidden states: len(texts) strings -> [B, H]. `keep_end` truncates on the left
        (a state's newest text is at its end)."""
        self.tokenizer.truncation_side = "left" if keep_end else "right"
        device = next(self.parameters()).device
        enc = self.tokenizer(
            [t if t else " " for t in texts],  # an empty text still gets one token to pool over
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=True,
        ).to(device)
        hidden = self.encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
        mask = enc.attention_mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).float()

    def forward(self, states: list[str], actions: list[str]):
        """Returns (q1, q2, v1, v2), each [B]."""
        s = self.embed(states, keep_end=True)
        sa = torch.cat([s, self.embed(actions)], dim=-1)
        return self.q1(sa).squeeze(-1), self.q2(sa).squeeze(-1), self.v1(s).squeeze(-1), self.v2(s).squeeze(-1)

    def values(self, states: list[str]):
        """(v1, v2) only, each [B]: the target V at next states needs no action."""
        s = self.embed(states, keep_end=True)
        return self.v1(s).squeeze(-1), self.v2(s).squeeze(-1)


# ---------------------------------------------------------------- targets, losses, soft update
def critic_targets(reward, done, next_v1, next_v2, pi_q1, pi_q2, gamma: float):
    """ArCHer's regression targets, one per head; every input is [B] (target-network outputs, no gradient).

    reward, done: [B] (done in {0, 1}); next_v1, next_v2: [B] Vbar_1, Vbar_2 at s'; pi_q1, pi_q2: [B]
    Qbar_1, Qbar_2 at (s, a'). Returns (y_q1, y_q2, y_v1, y_v2), each [B]:
        y_Qi = r + gamma (1 - done) Vbar_i(s'),   y_Vi = Qbar_i(s, a')
    Twin i only ever sees twin i's targets (Zhou et al., 2024, reference `ArcherTrainer.critic_loss`).
    """
    alive = gamma * (1.0 - done.float())  # a terminal transition (also a time-limit cut) bootstraps nothing
    return reward + alive * next_v1, reward + alive * next_v2, pi_q1, pi_q2


def critic_losses(q1, q2, v1, v2, y_q1, y_q2, y_v1, y_v2):
    """The critic's two loss terms, each a scalar; every input is [B] (online heads, then their targets).

    q_loss = MSE(Q_1, y_Q1) + MSE(Q_2, y_Q2),  v_loss = MSE(V_1, y_V1) + MSE(V_2, y_V2)  (means over B);
    the critic minimises their sum. Returns (q_loss, v_loss).
    """
    mse = nn.functional.mse_loss
    return mse(q1, y_q1) + mse(q2, y_q2), mse(v1, y_v1) + mse(v2, y_v2)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """theta_target <- tau * theta_source + (1 - tau) * theta_target, parameters and float buffers alike."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    for t, s in zip(target.state_dict().values(), source.state_dict().values(), strict=True):
        if t.is_floating_point():  # exact at the limits: tau = 1 gives 0 * t + s, tau = 0 gives t + 0 * s
            t.mul_(1.0 - tau).add_(s, alpha=tau)


def make_target(critic: UtteranceCritic) -> UtteranceCritic:
    target = copy.deepcopy(critic)
    target.requires_grad_(False)
    return target


# ---------------------------------------------------------------- the replay buffer
@dataclass
class Transition:
    state: str
    action: str
    reward: float
    next_state: str  # "" when done
    done: bool


class ReplayBuffer:
    """FIFO ring of text transitions: once full, each new transition replaces the oldest."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._items: list[Transition] = []
        self._next = 0  # slot the next transition goes to once the buffer is full

    def __len__(self) -> int:
        return len(self._items)

    def add(self, transitions: list[Transition]) -> None:
        for t in transitions:
            if len(self._items) < self.capacity:
                self._items.append(t)
            else:
                self._items[self._next] = t
                self._next = (self._next + 1) % self.capacity

    def ordered(self) -> list[Transition]:
        """Oldest first."""
        return self._items[self._next :] + self._items[: self._next]

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> list[Transition]:
        """Uniform with replacement."""
        if not self._items:
            raise ValueError("the replay buffer is empty")
        idx = torch.randint(len(self._items), (batch_size,), generator=generator)
        return [self._items[i] for i in idx.tolist()]

    # texts go into safetensors as utf-8 bytes + offsets, so the buffer checkpoints with the other tensors
    def state_dict(self) -> dict[str, torch.Tensor]:
        items = self.ordered()
        texts = [t for it in items for t in (it.state, it.action, it.next_state)]
        blobs = [t.encode("utf-8") for t in texts]
        lengths = torch.tensor([len(b) for b in blobs], dtype=torch.long)
        data = torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8) if any(blobs) else torch.zeros(0)
        return {
            "text_bytes": data.to(torch.uint8).clone(),
            "text_lengths": lengths,
            "reward": torch.tensor([it.reward for it in items], dtype=torch.float64),
            "done": torch.tensor([it.done for it in items], dtype=torch.bool),
            "capacity": torch.tensor(self.capacity),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        data = state["text_bytes"].to(torch.uint8).numpy().tobytes()
        ends = torch.cumsum(state["text_lengths"], 0).tolist()
        texts = [data[a:b].decode("utf-8") for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        rewards, dones = state["reward"].tolist(), state["done"].tolist()
        self.capacity = int(state["capacity"])
        self._items, self._next = [], 0
        self.add(
            [
                Transition(texts[3 * i], texts[3 * i + 1], rewards[i], texts[3 * i + 2], bool(dones[i]))
                for i in range(len(rewards))
            ]
        )
