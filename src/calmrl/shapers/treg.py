"""`shaper=treg`: T-REG token rewards from contrastive prompting of a reference model (Zhou et al., 2024).

Each step's prompt x is wrapped in an "improve" and a "worsen" instruction (x_better, x_worse); the reference
scores the step's response tokens after each, and
    r_t = scale * (sigma(log pi_ref(y_t | x_better, y_<t) - log pi_ref(y_t | x_worse, y_<t)) - 0.5)
lies in (-scale/2, scale/2): positive for tokens the reference finds more likely when asked for a better answer.
`algo=dpo_treg` uses the same rewards (`calmrl.algos.dpo.treg_token_rewards`) as its token-level regulariser.
"""

from __future__ import annotations

import torch

from calmrl.algos.dpo import treg_prompts, treg_token_rewards
from calmrl.data import Batch, Trajectory
from calmrl.shapers.base import SHAPERS, Shaper, ShaperContext


class TRegShaper:
    def __init__(self, ref, tokenizer, better_template: str, worse_template: str, scale=1.0, micro_batch_size=32):
        self.ref = ref.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.better_template = better_template
        self.worse_template = worse_template
        self.scale = float(scale)
        self.micro_batch_size = int(micro_batch_size)

    def row_rewards(self, prompts: list[str], responses: list[list[int]]) -> list[torch.Tensor]:
        """r_t of each response's tokens after its prompt (text): one tensor [len(response)] per row."""
        from calmrl.learners.torch import response_logprobs

        def encode(text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

        contrast = [treg_prompts(p, self.better_template, self.worse_template) for p in prompts]
        pad = self.tokenizer.pad_token_id
        better = response_logprobs(self.ref, [encode(b) for b, _ in contrast], responses, pad, self.micro_batch_size)
        worse = response_logprobs(self.ref, [encode(w) for _, w in contrast], responses, pad, self.micro_batch_size)
        return [self.scale * treg_token_rewards(b, w, torch.ones_like(b)) for b, w in zip(better, worse, strict=True)]

    def token_rewards(self, batch: Batch) -> torch.Tensor:
        """T-REG token rewards on the batch's response tokens: [N, L], zero elsewhere."""
        mask = batch.response_mask.bool()
        prompt_mask = batch.attention_mask.bool() & ~mask
        prompts = [
            self.tokenizer.decode(batch.input_ids[n][prompt_mask[n]].tolist(), skip_special_tokens=False)
            for n in range(len(batch))
        ]
        responses = [batch.input_ids[n][mask[n]].tolist() for n in range(len(batch))]
        out = torch.zeros_like(batch.response_mask, dtype=torch.float32)
        for n, row in enumerate(self.row_rewards(prompts, responses)):
            out[n, mask[n]] = row
        return out

    def __call__(self, batch: Batch, trajectories: list[Trajectory]) -> Batch:
        rewards = self.token_rewards(batch)
        batch.token_rewards = rewards if batch.token_rewards is None else batch.token_rewards + rewards
        return batch


@SHAPERS.register("treg")
def _treg(cfg, ctx: ShaperContext) -> Shaper:
    from calmrl.policy import load_policy
    from calmrl.shapers.implicit_q import check_same_tokenizer

    ref_path = cfg.ref_path or ctx.policy_path
    check_same_tokenizer(ctx.tokenizer, ref_path, "shaper.ref_path")
    ref, _ = load_policy(ref_path, device=ctx.device)
    return TRegShaper(ref, ctx.tokenizer, cfg.better_template, cfg.worse_template, cfg.scale, cfg.micro_batch_size)
