"""Single-process torch learner: token-level PPO-clip / REINFORCE with an optional KL penalty, and the
critic's clipped value regression for critic methods (PPO).

One `update(batch)` is `algo.ppo_epochs` passes over the batch in shuffled minibatches of
`algo.minibatch_size` rows; each minibatch is one optimizer step (policy, then critic), accumulated over
micro-batches of `learner.micro_batch_size` rows. A step whose loss or gradient norm is not finite is
skipped (and counted in `loss/skipped_steps`) so one bad batch cannot poison the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from calmrl.algos.losses import kl_low_var, masked_mean, ppo_clip_loss, reinforce_loss
from calmrl.learners.critic import clipped_value_loss


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_entropy: bool = False):
    """log pi(token_t | tokens_<t) aligned with input_ids: [n, L] -> [n, L] (column 0 is 0).

    with_entropy: also return the entropy of the distribution each token was drawn from, [n, L] aligned the
    same way (for the entropy bonus), as a (logprobs, entropy) pair.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    lp = torch.nn.functional.pad(logp_all.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1), (1, 0))
    if not with_entropy:
        return lp
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return lp, torch.nn.functional.pad(entropy, (1, 0))


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Right-padded rows prompt + response: (input_ids [N, W], attention_mask [N, W], response_mask [N, W] float)."""
    width = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    n = len(prompts)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response = torch.zeros((n, width))
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attention[i, : len(p) + len(r)] = 1
        response[i, len(p) : len(p) + len(r)] = 1.0
    return input_ids, attention, response


@torch.no_grad()
def response_logprobs(
    model, prompts: list[list[int]], responses: list[list[int]], pad_id: int, batch_size: int
) -> list[torch.Tensor]:
    """log pi(y_t | prompt, y_<t) of every response token, one float32 CPU tensor [len(response)] per row."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    for s in range(0, len(prompts), batch_size):
        ids, attn, mask = pack(prompts[s : s + batch_size], responses[s : s + batch_size], pad_id)
        lp = token_logprobs(model, ids.to(device), attn.to(device)).float().cpu()
        out.extend(lp[i][mask[i].bool()] for i in range(len(ids)))
    model.train(was_training)
    return out


#: the parts of `policy_token_loss` every learner backend logs, in this order
POLICY_LOSS_PARTS = ("loss/policy", "loss/kl", "loss/clip_frac", "loss/neg_logprob", "loss/entropy")


def policy_token_loss(
    algo, logp, old, adv, mask, ref=None, entropy=None, weights=None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch's policy loss as `algo` says: PPO-clip (with dual-clip when `algo.dual_clip`) or REINFORCE,
    + kl_coef x k3 KL to `ref`, - entropy_coef x token-mean `entropy` (verl's entropy bonus). Every learner
    backend calls this, so they optimise the same objective. `weights`: per-token weights of the policy-gradient
    term (rollout.correction=tis), or None. Inputs [n, L]; returns (loss, detached parts)."""
    if str(algo.loss) == "reinforce":
        pg, clip_frac = reinforce_loss(logp, adv, mask, weights), torch.zeros(())
    else:
        pg, clip_frac = ppo_clip_loss(logp, old, adv, mask, algo.clip_ratio, algo.get("dual_clip"), weights)
    loss, kl, mean_entropy = pg, torch.zeros(()), torch.zeros(())
    if algo.kl_coef > 0:
        kl = masked_mean(kl_low_var(logp, ref), mask)
        loss = loss + algo.kl_coef * kl
    if entropy is not None:
        mean_entropy = masked_mean(entropy, mask)
        loss = loss - algo.entropy_coef * mean_entropy
    parts = {
        "loss/policy": pg,
        "loss/kl": kl,
        "loss/clip_frac": clip_frac,
        "loss/neg_logprob": -masked_mean(logp, mask),
        "loss/entropy": mean_entropy,
    }
    return loss, {k: v.detach() for k, v in parts.items()}


def policy_logprobs(model, algo, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The training forward pass: (token log-probs [n, L], their entropies [n, L] when `algo` has an entropy
    bonus, else None), as `policy_token_loss` takes them."""
    if float(algo.get("entropy_coef", 0.0)) > 0:
        return token_logprobs(model, input_ids, attention_mask, with_entropy=True)
    return token_logprobs(model, input_ids, attention_mask), None


def update_steps(batch, train_policy: bool, policy_step: Callable, critic_step: Callable | None):
    """The optimizer steps each minibatch gets, as [(role, step(mb) -> metrics, or None when skipped)]: the policy's
    unless `train_policy` is off (critic warm-up), then the critic's when there is one."""
    if train_policy and batch.advantages is None:
        raise ValueError("batch.advantages is empty: run the algo's advantage function first")
    if critic_step is not None and (batch.returns is None or batch.values is None):
        raise ValueError("critic training needs batch.values and batch.returns (filled by the algo)")
    steps = [("policy", policy_step)] if train_policy else []
    return steps + ([("critic", critic_step)] if critic_step is not None else [])


def train_minibatches(batch, algo, steps: list[tuple[str, Callable]], orders: list[torch.Tensor]) -> dict[str, float]:
    """`algo.ppo_epochs` passes over the batch, epoch e in the row order `orders[e]`, in minibatches of
    `algo.minibatch_size` rows; every minibatch gets each of `steps` once. Each metric is averaged over its own
    role's steps (`critic/*` over the critic's); `loss/optimizer_steps` counts the policy's, `loss/skipped_steps`
    every role's skipped ones."""
    totals: dict[str, float] = {}
    counts = {"policy": 0, "critic": 0}
    skipped = 0
    for order in orders:
        for start in range(0, len(batch), algo.minibatch_size):
            mb = batch.select(order[start : start + algo.minibatch_size])
            for name, step in steps:
                metrics = step(mb)
                if metrics is None:
                    skipped += 1
                    continue
                counts[name] += 1
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v
    out = {k: v / max(counts["critic" if k.startswith("critic/") else "policy"], 1) for k, v in totals.items()}
    out["loss/skipped_steps"] = float(skipped)
    out["loss/optimizer_steps"] = float(counts["policy"])
    return out


class TorchLearner:
    rank, world = 0, 1  # the one rank of its world (DeepSpeedLearner's attributes, for code that shards work)

    def __init__(self, model, algo_cfg, learner_cfg, ref_model=None, critic=None):
        self.model = model
        self.ref_model = ref_model
        self.critic = critic
        self.algo = algo_cfg
        self.cfg = learner_cfg
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=algo_cfg.lr, weight_decay=learner_cfg.weight_decay
        )
        self.critic_optimizer = None
        if critic is not None:
            self.critic_optimizer = torch.optim.AdamW(
                critic.parameters(), lr=algo_cfg.critic_lr, weight_decay=learner_cfg.weight_decay
            )
        if algo_cfg.kl_coef > 0 and ref_model is None:
            raise ValueError("algo.kl_coef > 0 needs a reference model")

    # ------------------------------------------------------------------ no-grad passes for the algo
    def reference_logprobs(self, batch) -> torch.Tensor:
        """Reference-policy log-probs of the batch's tokens: [N, L], zero outside the response mask."""
        if self.ref_model is None:
            raise ValueError("no reference model was loaded")
        return self._per_token(lambda ids, attn: token_logprobs(self.ref_model, ids, attn), batch)

    def current_logprobs(self, batch) -> torch.Tensor:
        """The policy's own log-probs of the batch's tokens before the update: [N, L], zero outside the response
        mask; compared with the engine's sampling log-probs (calmrl.rollout.mismatch)."""
        self.model.eval()
        return self._per_token(lambda ids, attn: token_logprobs(self.model, ids, attn), batch)

    def critic_values(self, batch) -> torch.Tensor:
        """Critic values at every response token: [N, L], zero outside the response mask."""
        if self.critic is None:
            raise ValueError("no critic was built")
        self.critic.eval()
        return self._per_token(self.critic, batch)

    @torch.no_grad()
    def _per_token(self, fn: Callable, batch) -> torch.Tensor:
        out = torch.zeros_like(batch.response_mask)
        for rows, ids, attn, mask in self._micro_batches(batch):
            out[rows, : ids.shape[1]] = fn(ids, attn).float().cpu() * mask.cpu()
        return out

    def _micro_batches(self, batch) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(row index, input_ids, attention_mask, response_mask) per micro-batch, all-padding columns dropped."""
        for start in range(0, len(batch), self.cfg.micro_batch_size):
            rows = torch.arange(start, min(start + self.cfg.micro_batch_size, len(batch)))
            width = int(batch.attention_mask[rows].sum(dim=1).max())
            yield (
                rows,
                batch.input_ids[rows, :width].to(self.device),
                batch.attention_mask[rows, :width].to(self.device),
                batch.response_mask[rows, :width].to(self.device),
            )

    # ------------------------------------------------------------------ training
    def update(self, batch, train_policy: bool = True, generator: torch.Generator | None = None) -> dict[str, float]:
        """Train on the batch; `train_policy=False` trains only the critic (critic warm-up)."""
        orders = [torch.randperm(len(batch), generator=generator) for _ in range(self.algo.ppo_epochs)]
        steps = update_steps(batch, train_policy, self._policy_step, self._critic_step if self.critic else None)
        self.model.train()
        return train_minibatches(batch, self.algo, steps, orders)

    def _policy_step(self, mb) -> dict[str, float] | None:
        self.optimizer.zero_grad(set_to_none=True)
        num_tokens = mb.response_mask.sum().clamp(min=1.0)
        sums = dict.fromkeys(POLICY_LOSS_PARTS, 0.0)
        for rows, ids, attn, mask in self._micro_batches(mb):
            width = ids.shape[1]
            adv = mb.advantages[rows, :width].to(self.device)
            old = mb.old_logprobs[rows, :width].to(self.device)
            logp, entropy = policy_logprobs(self.model, self.algo, ids, attn)
            # each micro-batch's share of the minibatch's token mean, so the shares add up to the full mean
            share = mask.sum() / num_tokens
            ref = None
            if self.algo.kl_coef > 0:
                with torch.no_grad():
                    ref = token_logprobs(self.ref_model, ids, attn)
            weights = None if mb.loss_weights is None else mb.loss_weights[rows, :width].to(self.device)
            loss, parts = policy_token_loss(self.algo, logp, old, adv, mask, ref, entropy, weights)
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                return None
            (loss * share).backward()
            for k, v in parts.items():
                sums[k] += float(v) * float(share)
        grad_norm = self._clip_and_step(self.model, self.optimizer)
        if grad_norm is None:
            return None
        return {**sums, "loss/grad_norm": grad_norm}

    def _critic_step(self, mb) -> dict[str, float] | None:
        self.critic.train()
        self.critic_optimizer.zero_grad(set_to_none=True)
        num_tokens = mb.response_mask.sum().clamp(min=1.0)
        total = 0.0
        for rows, ids, attn, mask in self._micro_batches(mb):
            width = ids.shape[1]
            values = self.critic(ids, attn)
            old = mb.values[rows, :width].to(self.device)
            target = mb.returns[rows, :width].to(self.device)
            share = mask.sum() / num_tokens
            loss = clipped_value_loss(values, old, target, mask, self.algo.value_clip)
            if not torch.isfinite(loss):
                self.critic_optimizer.zero_grad(set_to_none=True)
                return None
            (loss * share).backward()
            total += float(loss.detach()) * float(share)
        grad_norm = self._clip_and_step(self.critic, self.critic_optimizer)
        if grad_norm is None:
            return None
        return {"critic/value_loss": total, "critic/grad_norm": grad_norm}

    @property
    def train_module(self):
        """What a loss computed outside the learner (`step_on_losses`) runs its forward through: the policy."""
        return self.model

    def step_on_losses(self, micro_losses) -> dict[str, float] | None:
        """One policy optimizer step on losses computed outside the learner (the offline preference losses of
        `calmrl.preference`). `micro_losses` yields (loss, metrics) per micro-batch, each loss already its share of
        the minibatch loss; metrics are summed. A non-finite loss or gradient norm skips the step (returns None)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for loss, metrics in micro_losses:
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                return None
            loss.backward()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        grad_norm = self._clip_and_step(self.model, self.optimizer)
        if grad_norm is None:
            return None
        return {**sums, "loss/grad_norm": grad_norm}

    def _clip_and_step(self, module, optimizer) -> float | None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), self.cfg.max_grad_norm))
        if not math.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            return None
        optimizer.step()
        return grad_norm

    # ------------------------------------------------------------------ checkpoint state
    def critic_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The critic's weights for the checkpoint's `critic` entry; None without a critic."""
        return None if self.critic is None else self.critic.state_dict()

    def optimizer_state(self) -> dict:
        state = {"policy": self.optimizer.state_dict()}
        if self.critic_optimizer is not None:
            state["critic"] = self.critic_optimizer.state_dict()
        return state

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["policy"])
        if self.critic_optimizer is not None and "critic" in state:
            self.critic_optimizer.load_state_dict(state["critic"])
