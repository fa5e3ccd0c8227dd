"""Single-process torch learner: token-level PPO-clip / REINFORCE with an optional KL penalty.

One `update(batch)` is `algo.ppo_epochs` passes over the batch in shuffled minibatches of
`algo.minibatch_size` rows; each minibatch is one optimizer step, accumulated over micro-batches of
`learner.micro_batch_size` rows. A step whose loss or gradient norm is not finite is skipped (and
counted in `loss/skipped_steps`) so one bad batch cannot poison the weights.
"""

from __future__ import annotations

import math

import torch

from calmrl.algos.losses import kl_low_var, masked_mean, ppo_clip_loss, reinforce_loss


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log pi(token_t | tokens_<t) aligned with input_ids: [n, L] -> [n, L] (column 0 is 0)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.pad(lp, (1, 0))


class TorchLearner:
    def __init__(self, model, algo_cfg, learner_cfg, ref_model=None):
        self.model = model
        self.ref_model = ref_model
        self.algo = algo_cfg
        self.cfg = learner_cfg
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=algo_cfg.lr,
            weight_decay=learner_cfg.weight_decay,
        )
        if algo_cfg.kl_coef > 0 and ref_model is None:
            raise ValueError("algo.kl_coef > 0 needs a reference model")

    def update(self, batch, generator: torch.Generator | None = None) -> dict[str, float]:
        if batch.advantages is None:
            raise ValueError("batch.advantages is empty: run the algo's advantage function first")
        self.model.train()
        n = len(batch)
        totals: dict[str, float] = {}
        steps = skipped = 0
        for _ in range(self.algo.ppo_epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, self.algo.minibatch_size):
                metrics = self._optimizer_step(batch.select(order[start : start + self.algo.minibatch_size]))
                if metrics is None:
                    skipped += 1
                    continue
                steps += 1
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v
        out = {k: v / max(steps, 1) for k, v in totals.items()}
        out["loss/skipped_steps"] = float(skipped)
        out["loss/optimizer_steps"] = float(steps)
        return out

    def _optimizer_step(self, mb) -> dict[str, float] | None:
        self.optimizer.zero_grad(set_to_none=True)
        num_tokens = mb.response_mask.sum().clamp(min=1.0)
        sums = {"pg": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy_proxy": 0.0}
        finite = True
        for start in range(0, len(mb), self.cfg.micro_batch_size):
            micro = mb.select(torch.arange(start, min(start + self.cfg.micro_batch_size, len(mb))))
            width = int(micro.attention_mask.sum(dim=1).max())  # drop all-padding columns
            ids = micro.input_ids[:, :width].to(self.device)
            attn = micro.attention_mask[:, :width].to(self.device)
            mask = micro.response_mask[:, :width].to(self.device)
            adv = micro.advantages[:, :width].to(self.device)
            old = micro.old_logprobs[:, :width].to(self.device)
            logp = token_logprobs(self.model, ids, attn)

            # Each micro-batch's share of the minibatch's token mean, so the sum is the full token mean.
            share = mask.sum() / num_tokens
            if str(self.algo.loss) == "reinforce":
                pg, clip_frac = reinforce_loss(logp, adv, mask), torch.zeros(())
            else:
                pg, clip_frac = ppo_clip_loss(logp, old, adv, mask, self.algo.clip_ratio)
            loss = pg
            if self.algo.kl_coef > 0:
                with torch.no_grad():
                    ref = token_logprobs(self.ref_model, ids, attn)
                kl = masked_mean(kl_low_var(logp, ref), mask)
                loss = loss + self.algo.kl_coef * kl
                sums["kl"] += float(kl.detach()) * float(share)
            if not torch.isfinite(loss):
                finite = False
                break
            (loss * share).backward()
            sums["pg"] += float(pg.detach()) * float(share)
            sums["clip_frac"] += float(clip_frac) * float(share)
            sums["entropy_proxy"] += float(-masked_mean(logp.detach(), mask)) * float(share)

        grad_norm = (
            float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm))
            if finite
            else math.nan
        )
        if not finite or not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        return {
            "loss/policy": sums["pg"],
            "loss/kl": sums["kl"],
            "loss/clip_frac": sums["clip_frac"],
            "loss/neg_logprob": sums["entropy_proxy"],
            "loss/grad_norm": grad_norm,
        }
