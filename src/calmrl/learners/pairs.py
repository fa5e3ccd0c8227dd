"""The policy role of the preference algos (dpo, dpo_treg) on one learner rank: the pair loss of each step on this
rank's share of the step's pairs, the held-out evaluation on its share of the held-out pairs, and the reference
log-probs of its share of all the pairs (computed once, before the first step; `calmrl.preference` caches them).

In one process (learner=torch, or learner=deepspeed as a world of one) the share is every pair. Under
cluster=ray every DeepSpeed rank holds a `PairRole`: the tokenized pairs and the reference cache are shipped to each
rank once (`load`), and per step the driver sends only the pair indices. Rank r takes the r-th contiguous share of
them; every rank runs the same number of micro-batches (ZeRO-3 gathers parameters inside each forward, a
collective), a rank whose share has run out running a zero-weight pass on a real pair. Each micro-batch's loss is
its pairs' summed loss over the step's pair count, so the shares add up, over micro-batches and ranks, to the mean
loss over all the step's pairs: the step `learner=torch` takes in one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from calmrl.learners.torch import pack, response_logprobs, token_logprobs


@dataclass
class TokenizedPairs:
    prompt: list[list[int]]
    chosen: list[list[int]]  # response tokens, EOS last
    rejected: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt)

    def rows(self, start: int, stop: int) -> TokenizedPairs:
        return TokenizedPairs(self.prompt[start:stop], self.chosen[start:stop], self.rejected[start:stop])

    def __add__(self, other: TokenizedPairs) -> TokenizedPairs:
        return TokenizedPairs(self.prompt + other.prompt, self.chosen + other.chosen, self.rejected + other.rejected)


@dataclass
class ReferenceCache:
    """Per pair: reference sequence log-probs of both responses; for T-REG, r_hat_t of every response token."""

    chosen: torch.Tensor  # [P] log pi_ref(y_w | x)
    rejected: torch.Tensor  # [P] log pi_ref(y_l | x)
    chosen_rewards: list[torch.Tensor] | None = None  # P tensors [len(y_w)] of r_hat_t
    rejected_rewards: list[torch.Tensor] | None = None

    def rows(self, start: int, stop: int) -> ReferenceCache:
        def cut(rewards):
            return rewards[start:stop] if rewards is not None else None

        return ReferenceCache(
            self.chosen[start:stop], self.rejected[start:stop], cut(self.chosen_rewards), cut(self.rejected_rewards)
        )

    @staticmethod
    def concat(parts: list[ReferenceCache]) -> ReferenceCache:
        rewards = parts[0].chosen_rewards is not None
        return ReferenceCache(
            torch.cat([p.chosen for p in parts]),
            torch.cat([p.rejected for p in parts]),
            [r for p in parts for r in p.chosen_rewards] if rewards else None,
            [r for p in parts for r in p.rejected_rewards] if rewards else None,
        )


@dataclass
class PairData:
    """What a `PairRole` trains and evaluates on: the tokenized training and held-out pairs, with their reference."""

    train: TokenizedPairs
    held: TokenizedPairs
    ref_train: ReferenceCache
    ref_held: ReferenceCache


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank `rank`'s contiguous share of n items (ceil(n / world) each, the last ones shorter)."""
    per_rank = math.ceil(n / world)
    return min(rank * per_rank, n), min((rank + 1) * per_rank, n)


@torch.no_grad()
def score_reference(
    ref_model,
    pad_id: int,
    data: TokenizedPairs,
    contrast_prompts: tuple[list[list[int]], list[list[int]]] | None,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
) -> ReferenceCache:
    """log pi_ref(y|x) of both responses of every pair, and with `contrast_prompts` (T-REG's "improve" / "worsen"
    prompt ids, one of each per pair) r_hat_t = log pi_ref(y_t | better, y_<t) - log pi_ref(y_t | worse, y_<t)
    of every response token. This rank scores its share of the pairs; with world > 1 the shares are gathered,
    so every rank returns the whole cache (the reference is a plain model on each rank: no collective inside)."""
    from calmrl.algos.dpo import treg_token_rewards

    start, stop = share(len(data), rank, world)
    mine = data.rows(start, stop)
    chosen = response_logprobs(ref_model, mine.prompt, mine.chosen, pad_id, batch_size)
    rejected = response_logprobs(ref_model, mine.prompt, mine.rejected, pad_id, batch_size)

    def sums(rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([r.sum() for r in rows]) if rows else torch.zeros(0)

    part = ReferenceCache(sums(chosen), sums(rejected))
    if contrast_prompts is not None:
        better, worse = (p[start:stop] for p in contrast_prompts)
        for name, responses in (("chosen", mine.chosen), ("rejected", mine.rejected)):
            lb = response_logprobs(ref_model, better, responses, pad_id, batch_size)
            lw = response_logprobs(ref_model, worse, responses, pad_id, batch_size)
            rewards = [treg_token_rewards(b, w, torch.ones_like(b)) for b, w in zip(lb, lw, strict=True)]
            setattr(part, f"{name}_rewards", rewards)
    if world == 1:
        return part
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, part)
    return ReferenceCache.concat(parts)


class PairRole:
    """One rank's part of the preference algos' training (see the module docstring). `learner`: TorchLearner or a
    DeepSpeedLearner rank (its `train_module`, `step_on_losses`, `device`, `rank`, `world`); `pair_loss`: the
    method's per-pair loss (calmrl.algos.dpo)."""

    def __init__(self, learner, pair_loss, needs_token_rewards: bool, algo_cfg, pad_id: int, micro_batch_size: int):
        self.learner, self.pair_loss, self.needs_token_rewards = learner, pair_loss, needs_token_rewards
        self.algo, self.pad_id = algo_cfg, pad_id
        self.pairs_per_micro = max(1, int(micro_batch_size) // 2)  # a pair is two rows
        self.data: PairData | None = None

    def load(self, data: PairData) -> None:
        self.data = data

    def train_step(self, idx: list[int]) -> dict[str, float] | None:
        """One optimizer step on the training pairs `idx` (the same list on every rank): the mean pair loss, and the
        step's metrics as means over its pairs (`pair_metrics`). None: the step was skipped (a non-finite loss or
        gradient norm)."""
        total = len(idx)

        def micro_losses():
            for chunk, weight in self._my_chunks(idx):
                out = self._losses(self.data.train, self.data.ref_train, chunk)
                metrics = {k: weight * v for k, v in pair_metrics(out, total, prefix="").items()}
                yield weight * out["loss"].sum() / total, metrics

        return self.learner.step_on_losses(micro_losses())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Implicit reward margin, accuracy and DPO loss, means over the held-out pairs (`eval/...`); {} without any."""
        n = len(self.data.held)
        if n == 0:
            return {}
        module = self.learner.train_module
        module.eval()
        sums: dict[str, float] = {}
        for chunk, weight in self._my_chunks(list(range(n))):
            for k, v in pair_metrics(self._losses(self.data.held, self.data.ref_held, chunk), n, "eval/").items():
                sums[k] = sums.get(k, 0.0) + weight * v
        module.train()
        if self.learner.world == 1:
            return sums
        import torch.distributed as dist

        names = sorted(sums)
        reduced = torch.tensor([sums[k] for k in names], dtype=torch.float64)
        dist.all_reduce(reduced)
        return {k: float(reduced[i]) for i, k in enumerate(names)}

    def _my_chunks(self, idx: list[int]) -> list[tuple[list[int], float]]:
        """(pair indices, weight) of each micro-batch of this rank's share of `idx`; the same count on every rank
        (weight 0: this rank's share ran out, and the pass on the step's first pair only keeps the ranks in step)."""
        start, stop = share(len(idx), self.learner.rank, self.learner.world)
        mine, per = idx[start:stop], self.pairs_per_micro
        count = max(math.ceil(math.ceil(len(idx) / self.learner.world) / per), 1)
        chunks = [mine[k * per : (k + 1) * per] for k in range(count)]
        return [(chunk, 1.0) if chunk else (idx[:1], 0.0) for chunk in chunks]

    def _losses(self, data: TokenizedPairs, ref: ReferenceCache, idx: list[int]) -> dict[str, torch.Tensor]:
        """The method's per-pair loss terms of pairs `idx`, on 2P rows (chosen, then rejected)."""
        prompts = [data.prompt[i] for i in idx] * 2
        responses = [data.chosen[i] for i in idx] + [data.rejected[i] for i in idx]
        ids, attn, mask = pack(prompts, responses, self.pad_id)
        ref_seq = torch.cat([ref.chosen[idx], ref.rejected[idx]])
        rewards = torch.zeros_like(mask)
        if self.needs_token_rewards:  # T-REG's r_hat_t, placed on each row's response tokens
            rows = [ref.chosen_rewards[i] for i in idx] + [ref.rejected_rewards[i] for i in idx]
            for r, row in enumerate(rows):
                rewards[r, mask[r].bool()] = row
        dev = self.learner.device
        ids, attn, mask = ids.to(dev), attn.to(dev), mask.to(dev)
        logp = token_logprobs(self.learner.train_module, ids, attn)
        return self.pair_loss(logp, mask, ref_seq.to(dev), rewards.to(dev), self.algo)


def pair_metrics(out: dict[str, torch.Tensor], total: int, prefix: str) -> dict[str, float]:
    """Sums over this chunk's pairs divided by `total`, so chunks add up to means over all pairs.

    Training names: loss/dpo, reward/margin, reward/accuracy, reward/chosen, reward/rejected (+ loss/treg_reg,
    loss/treg_weight for T-REG); evaluation: the same under eval/ (eval/loss_dpo, eval/reward_margin, ...)."""
    chosen, rejected = out["chosen_reward"].detach(), out["rejected_reward"].detach()
    loss_ns = f"{prefix}loss_" if prefix else "loss/"
    reward_ns = f"{prefix}reward_" if prefix else "reward/"
    values = {
        f"{loss_ns}dpo": out["dpo"].detach(),
        f"{reward_ns}margin": chosen - rejected,
        f"{reward_ns}accuracy": (chosen > rejected).float(),
        f"{reward_ns}chosen": chosen,
        f"{reward_ns}rejected": rejected,
    }
    if "reg" in out:
        values[f"{loss_ns}treg_reg"] = out["reg"].detach()
        values[f"{loss_ns}treg_weight"] = out["weight"]
    return {k: float(v.sum()) / total for k, v in values.items()}
