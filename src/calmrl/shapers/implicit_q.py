"""`shaper=implicit_q`: dense token rewards from a DPO-trained policy ("From r to Q*", Rafailov et al., 2024).

A DPO policy pi with reference pi_ref is a token-level Q-function; its implicit reward of response token t is
    r_t = beta * (log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)),
and sum_t r_t is the DPO sequence reward beta * log(pi(y|x) / pi_ref(y|x)). The shaper scores every response
token of the batch with both models and adds r_t to `batch.token_rewards`. pi is `shaper.policy_path`, pi_ref is
`shaper.ref_path` (default: this run's initial policy); both must share the run policy's tokenizer, since they
score the batch's token ids as they are.
"""

from __future__ import annotations

import torch

from calmrl.algos.dpo import implicit_q_rewards
from calmrl.data import Batch, Trajectory
from calmrl.errors import ConfigError
from calmrl.shapers.base import SHAPERS, Shaper, ShaperContext


@torch.no_grad()
def batch_token_logprobs(model, batch: Batch, micro_batch_size: int) -> torch.Tensor:
    """log model(token_t | tokens_<t) of every token of the batch's rows: [N, L] float32 on the CPU, zero outside
    the response mask. Rows are right-padded (`calmrl.data.build_batch`)."""
    from calmrl.learners.torch import token_logprobs

    device = next(model.parameters()).device
    out = torch.zeros_like(batch.response_mask, dtype=torch.float32)
    for start in range(0, len(batch), micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        width = int(batch.attention_mask[rows].sum(dim=1).max())
        ids = batch.input_ids[rows, :width].to(device)
        attn = batch.attention_mask[rows, :width].to(device)
        out[rows, :width] = token_logprobs(model, ids, attn).float().cpu() * batch.response_mask[rows, :width]
    return out


def check_same_tokenizer(tokenizer, path, key: str) -> None:
    """The model at `path` must read token ids as the run's tokenizer writes them."""
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(path)
    if other.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"{key}={path} has another tokenizer than this run's policy; token rewards need the same vocabulary"
        )


class ImplicitQShaper:
    def __init__(self, policy, ref, beta: float, micro_batch_size: int = 32):
        self.policy = policy.eval().requires_grad_(False)
        self.ref = ref.eval().requires_grad_(False)
        self.beta = float(beta)
        self.micro_batch_size = int(micro_batch_size)

    def token_rewards(self, batch: Batch) -> torch.Tensor:
        """r_t = beta * (log pi - log pi_ref) on the batch's response tokens: [N, L]."""
        lp = batch_token_logprobs(self.policy, batch, self.micro_batch_size)
        ref = batch_token_logprobs(self.ref, batch, self.micro_batch_size)
        return implicit_q_rewards(lp, ref, batch.response_mask, self.beta)

    def __call__(self, batch: Batch, trajectories: list[Trajectory]) -> Batch:
        rewards = self.token_rewards(batch)
        batch.token_rewards = rewards if batch.token_rewards is None else batch.token_rewards + rewards
        return batch


@SHAPERS.register("implicit_q")
def _implicit_q(cfg, ctx: ShaperContext) -> Shaper:
    from calmrl.policy import load_policy

    ref_path = cfg.ref_path or ctx.policy_path
    check_same_tokenizer(ctx.tokenizer, cfg.policy_path, "shaper.policy_path")
    check_same_tokenizer(ctx.tokenizer, ref_path, "shaper.ref_path")
    policy, _ = load_policy(cfg.policy_path, device=ctx.device)
    ref, _ = load_policy(ref_path, device=ctx.device)
    return ImplicitQShaper(policy, ref, cfg.beta, cfg.micro_batch_size)
