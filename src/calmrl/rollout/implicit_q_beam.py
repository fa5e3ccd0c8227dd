"""Implicit-Q beam search: decode a DPO policy by its implicit token reward ("From r to Q*", Rafailov et al., 2024).

A DPO policy pi trained against pi_ref assigns token t of a response the reward r_t = beta * (log pi(y_t|x,y_<t)
- log pi_ref(y_t|x,y_<t)); the paper shows that beam search on the cumulative implicit reward is a search over the
DPO reward model. Here, per prompt:

    beams      = [empty response], score 0
    each step: every live beam proposes its policy's top `width` next tokens;
               candidate score = beam score + beta * (log pi(tok) - log pi_ref(tok));
               finished beams (EOS emitted) stay as they are; the `width` best candidates survive
    stop when every beam has ended or max_new_tokens; return the best-scoring beam

Proposals come from the policy, so width 1 is greedy decoding of the policy. The forward passes recompute the
whole prefix each step (no KV cache): simple and exact, meant for the short responses of evaluation.
`ImplicitQBeamGenerator` is a `GenerateFn` (prompts -> Generations), a drop-in for `HFGenerator` in
`calmrl.tools.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from calmrl.rollout.episodes import Generation


@dataclass
class _Beam:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # the policy's log-prob of each token
    score: float = 0.0  # cumulative implicit reward sum_t beta * (log pi - log pi_ref)
    done: bool = False


def next_token_logprobs(model, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """log model(. | sequence) at the end of each sequence: [B, V] float32. Left-padded, with position ids
    counted from each row's first real token (what `generate` does), so padding never shifts a row."""
    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        attn[i, width - len(s) :] = 1
    ids, attn = ids.to(device), attn.to(device)
    positions = (attn.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False).logits[:, -1]
    return torch.log_softmax(logits.float(), dim=-1)


class ImplicitQBeamGenerator:
    """Callable: prompts -> Generations, by beam search on the implicit token reward of `policy` vs `ref`."""

    def __init__(
        self, policy, ref, tokenizer, max_new_tokens: int, beam_width: int = 4, beta: float = 0.1, batch_size=64
    ):
        if beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {beam_width}")
        self.policy, self.ref, self.tokenizer = policy, ref, tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.width = int(beam_width)
        self.beta = float(beta)
        self.batch_size = int(batch_size)  # prompts searched together (each holds up to `width` beams)

    def __call__(self, prompts: list[str]) -> list[Generation]:
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._search(prompts[start : start + self.batch_size]))
        return out

    @torch.no_grad()
    def _search(self, prompts: list[str]) -> list[Generation]:
        tok = self.tokenizer
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        beams = [[_Beam()] for _ in prompts]
        modes = [(m, m.training) for m in (self.policy, self.ref)]
        for m, _ in modes:
            m.eval()
        for _ in range(self.max_new_tokens):
            live = [(b, k) for b, group in enumerate(beams) for k, beam in enumerate(group) if not beam.done]
            if not live:
                break
            seqs = [prompt_ids[b] + beams[b][k].tokens for b, k in live]
            lp = next_token_logprobs(self.policy, seqs, tok.pad_token_id)  # [B, V]
            ref = next_token_logprobs(self.ref, seqs, tok.pad_token_id)
            top_lp, top_tok = lp.topk(self.width, dim=-1)  # the policy's proposals, best first
            reward = self.beta * (top_lp - ref.gather(-1, top_tok))  # r_t of each proposal
            candidates: list[list[tuple[float, int, _Beam]]] = [[] for _ in prompts]
            for b, group in enumerate(beams):  # finished beams compete unchanged
                candidates[b].extend((beam.score, -1, beam) for beam in group if beam.done)
            for row, (b, k) in enumerate(live):
                beam = beams[b][k]
                for j in range(self.width):
                    t = int(top_tok[row, j])
                    new = _Beam(
                        tokens=beam.tokens + [t],
                        logprobs=beam.logprobs + [float(top_lp[row, j])],
                        score=beam.score + float(reward[row, j]),
                        done=t == tok.eos_token_id,
                    )
                    candidates[b].append((new.score, row * self.width + j, new))
            # highest score first; ties keep the proposal order (beam, then policy rank), so width 1 is greedy
            beams = [[c[2] for c in sorted(group, key=lambda c: -c[0])[: self.width]] for group in candidates]
        for m, was_training in modes:
            m.train(was_training)
        gens = []
        for b, group in enumerate(beams):
            best = max(group, key=lambda beam: beam.score)
            gens.append(
                Generation(
                    prompt_ids=prompt_ids[b],
                    response_ids=best.tokens,
                    logprobs=best.logprobs,
                    text=tok.decode(best.tokens, skip_special_tokens=True),
                )
            )
        return gens


def build_implicit_q_beam(cfg, policy, tokenizer, policy_dir, device) -> ImplicitQBeamGenerator:
    """The `decode=implicit_q_beam` generator for `calmrl eval`: the evaluated policy against `decode.ref_path`,
    or against the initial policy of the run the checkpoint belongs to."""
    from pathlib import Path

    from calmrl.errors import ConfigError
    from calmrl.policy import load_policy
    from calmrl.shapers.implicit_q import check_same_tokenizer

    ref_path = cfg.decode.ref_path or _run_reference(cfg.checkpoint)
    if ref_path is None:
        raise ConfigError(
            "decode=implicit_q_beam needs the DPO reference: set decode.ref_path=<model dir> (or evaluate a "
            "checkpoint of a run, whose initial policy is the default)"
        )
    if Path(ref_path).resolve() == Path(policy_dir).resolve():
        raise ConfigError(f"decode.ref_path={ref_path} is the evaluated policy itself: every implicit reward is 0")
    check_same_tokenizer(tokenizer, ref_path, "decode.ref_path")
    ref, _ = load_policy(ref_path, cfg.policy.dtype, cfg.policy.trust_remote_code, device)
    return ImplicitQBeamGenerator(
        policy,
        ref,
        tokenizer,
        cfg.rollout.max_new_tokens,
        beam_width=cfg.decode.beam_width,
        beta=cfg.decode.beta,
        batch_size=max(1, cfg.rollout.generation_batch_size // cfg.decode.beam_width),
    )


def _run_reference(checkpoint: str | None):
    """The initial policy of the run holding `checkpoint`: its policy.path, or the tiny policy it built."""
    from pathlib import Path

    from omegaconf import OmegaConf

    if not checkpoint:
        return None
    given = Path(checkpoint).expanduser()
    for d in (given, given.parent, given.parent.parent):
        if (d / ".hydra" / "config.yaml").is_file():
            trained = OmegaConf.load(d / ".hydra" / "config.yaml")
            if trained.get("policy", {}).get("path"):
                return str(Path(trained.policy.path).expanduser())
            if (d / "tiny_policy" / "config.json").is_file():
                return str(d / "tiny_policy")
    return None
