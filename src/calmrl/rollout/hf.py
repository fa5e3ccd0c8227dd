"""Batched generation with transformers, recording the sampling log-prob of every response token."""

from __future__ import annotations

import torch

from calmrl.rollout.episodes import Generation


class HFGenerator:
    """Callable: prompts -> Generations, sampling at `temperature` (0 = greedy)."""

    def __init__(self, model, tokenizer, max_new_tokens: int, temperature: float = 1.0, batch_size: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)

    def __call__(self, prompts: list[str]) -> list[Generation]:
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._generate(prompts[start : start + self.batch_size]))
        return out

    @torch.no_grad()
    def _generate(self, prompts: list[str]) -> list[Generation]:
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        greedy = self.temperature <= 0
        sampling = {} if greedy else {"temperature": self.temperature, "top_k": 0, "top_p": 1.0}
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(
            **enc,
            max_new_tokens=self.max_new_tokens,
            do_sample=not greedy,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            return_dict_in_generate=True,
            output_logits=True,
            **sampling,
        )
        self.model.train(was_training)
        prompt_len = enc["input_ids"].shape[1]
        new_tokens = out.sequences[:, prompt_len:]  # [B, T]
        # Raw logits, scaled as the sampler scaled them, give the log-probs of the sampling distribution.
        logits = torch.stack(out.logits, dim=1).float()  # [B, T, V]
        if not greedy:
            logits = logits / self.temperature
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)  # [B, T]

        # A response ends at (and includes) its first EOS; later positions are padding.
        is_eos = new_tokens == tok.eos_token_id
        after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
        lengths = (~after_eos).sum(dim=1).tolist()
        gens = []
        for b, n in enumerate(lengths):
            prompt_ids = enc["input_ids"][b][enc["attention_mask"][b].bool()].tolist()
            response_ids = new_tokens[b, :n].tolist()
            gens.append(
                Generation(
                    prompt_ids=prompt_ids,
                    response_ids=response_ids,
                    logprobs=logprobs[b, :n].tolist(),
                    text=tok.decode(response_ids, skip_special_tokens=True),
                )
            )
        return gens
