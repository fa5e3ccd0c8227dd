"""PURE min-form process rewards (Cheng et al., 2025, "Stop Summation: Min-Form Credit Assignment Is All Process
Reward Model Needs for Reasoning"; reference code CJReinforce/PURE, `turn_process_reward_logits_to_reward`).

Each response is split into reasoning steps on blank lines (`calmrl.envs.math.split_steps`, PURE's "\\n\\n").
A process reward model (PRM) scores every step, r_i = p(correct) - p(wrong) in [-1, 1]; the min-form
transform with temperature T then reweights the step rewards of one response,

    w = softmax(-r / T)          (over the K steps of the response)
    r~_i = w_i * r_i

and r~_i is placed on step i's last token in `batch.token_rewards` (all other tokens 0). With gamma = 1 the
return from step i is G_i = sum_{j >= i} r~_j, so
  - T -> 0:   w is one-hot on the worst step m = argmin r; G_i = min_j r_j for every i <= m (the minimum of the
              future rewards, which is what PURE's value is) and G_i = 0 after it; the response's total is min r;
  - T -> inf: w = 1/K; G_i = (1/K) sum_{j >= i} r_j, the usual sum form scaled by 1/K (total = mean r).

Step i's last token: for i < K, the token that holds the last character before step i+1 begins (the end of the
blank-line separator, as PURE rewards the "\\n\\n" token); for the last step, the row's last response token
(its EOS when one was generated). `batch.token_reward_mask` marks these tokens.

PRMs (`shaper.prm`):
  - `prm.path` = a token-classification model directory (AutoModelForTokenClassification, e.g. PURE's
    Qwen2.5-Math-7B-PRM800K): its input is the policy's prompt, then each step followed by
    `prm.step_separator`; step i's reward is p(label `correct_label`) - p(label `wrong_label`) of the softmax
    over the labels, read at the last token of step i's separator (PURE: labels 1 = correct, 0 = wrong).
  - `prm.path = null`: a deterministic rule-based verifier (`arithmetic_step_reward`) that checks every
    "a op b = c" claim of a step: +1 if all hold, -1 if any fails, `prm.neutral_reward` without claims.

The env's verifiable reward (math-verify) stays in `batch.rewards`: `algo=pure` adds it at EOS with its own RLOO
baseline (`algo.verifiable_coef`), and every other algo counts it as its return, so the shaper does not add it
a second time. A math problem without an answer has no verifiable reward (env reward 0, anchor marked): its
responses are scored by the PRM like any other, and under `algo=pure` these process rewards are all they get.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import torch

from calmrl.data import Batch, Trajectory
from calmrl.shapers.base import SHAPERS, ShaperContext


# ---------------------------------------------------------------- the min-form transform (pure tensor function)
def minform_rewards(step_rewards: torch.Tensor, step_mask: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Min-form step rewards r~ = softmax(-r / T) * r over each row's valid steps; 0 on padding.

    step_rewards: [N, K] float, step_mask: [N, K] bool (row n has steps where True). Returns [N, K] float.
    temperature = inf gives uniform weights 1/K_n (the sum form scaled by 1/K_n). A row without steps is all 0.
    """
    r = step_rewards.float()
    mask = step_mask.bool()
    if math.isinf(float(temperature)):
        logits = torch.zeros_like(r)
    else:
        logits = -r / float(temperature)
    logits = logits.masked_fill(~mask, float("-inf"))
    has_steps = mask.any(dim=1, keepdim=True)
    w = torch.softmax(torch.where(has_steps, logits, torch.zeros_like(logits)), dim=1)  # no NaN for empty rows
    return torch.where(mask, w * r, torch.zeros_like(r))


def step_returns(shaped: torch.Tensor, step_mask: torch.Tensor) -> torch.Tensor:
    """G_i = sum_{j >= i} r~_j (gamma = 1) along each row's steps: [N, K] -> [N, K], 0 on padding."""
    s = shaped.float() * step_mask
    return s.flip(1).cumsum(1).flip(1) * step_mask


# ---------------------------------------------------------------- step boundaries in token space
def step_char_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans in `text` of the steps `split_steps(text)` returns, in order."""
    from calmrl.envs.math import split_steps

    spans, cursor = [], 0
    for step in split_steps(text):
        start = text.find(step, cursor)
        if start < 0:  # split_steps normalised "\r\n"; fall back to the step's first line
            start = text.find(step.splitlines()[0], cursor) if step.splitlines() else cursor
            start = cursor if start < 0 else start
        spans.append((start, start + len(step)))
        cursor = start + len(step)
    return spans


def token_char_ends(response_ids: list[int], tokenizer) -> tuple[str, list[int]]:
    """(text, ends): the decoded response and, per token t, the number of characters of text up to token t.

    Decoded token by token; when that does not reproduce the whole decode (a multi-byte character split over
    tokens), each end is measured on the decoded prefix instead.
    """
    pieces = tokenizer.batch_decode([[i] for i in response_ids], skip_special_tokens=True)
    text = "".join(pieces)
    whole = tokenizer.decode(response_ids, skip_special_tokens=True)
    if text == whole:
        ends, total = [], 0
        for piece in pieces:
            total += len(piece)
            ends.append(total)
        return text, ends
    ends = [len(tokenizer.decode(response_ids[: t + 1], skip_special_tokens=True)) for t in range(len(response_ids))]
    return whole, ends


def step_end_tokens(text: str, char_ends: list[int]) -> tuple[list[str], list[int]]:
    """(steps, ends): the steps of `text` and each step's last token (an index into the response tokens).

    Step i < K ends at the token holding the character just before step i+1 starts (the separator's end);
    the last step ends at the last token. `char_ends[t]` = characters of text through token t.
    """
    from bisect import bisect_right

    spans = step_char_spans(text)
    steps = [text[a:b] for a, b in spans]
    if not spans or not char_ends:
        return [], []
    last = len(char_ends) - 1
    ends = [min(bisect_right(char_ends, spans[i + 1][0] - 1), last) for i in range(len(spans) - 1)] + [last]
    return steps, ends


# ---------------------------------------------------------------- PRMs
_NUM = r"-?\d+(?:\.\d+)?"
_OPS = {"+": "+", "-": "-", "−": "-", "*": "*", "×": "*", "x": "*", "\\times": "*", "\\cdot": "*", "/": "/", "÷": "/"}
_OP = "|".join(re.escape(o) for o in sorted(_OPS, key=len, reverse=True))
_CLAIM = re.compile(rf"(?<![\w.])({_NUM})\s*({_OP})\s*({_NUM})\s*=\s*({_NUM})(?![\w.])")


def arithmetic_claims(step: str) -> list[tuple[Fraction, str, Fraction, Fraction]]:
    """Every "a op b = c" claim in `step` (numbers with optional sign and decimals; thousands commas removed)."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", step)
    return [(Fraction(a), _OPS[op], Fraction(b), Fraction(c)) for a, op, b, c in _CLAIM.findall(text)]


def arithmetic_step_reward(step: str, neutral: float = 0.0) -> float:
    """Rule-based PRM: +1 if every "a op b = c" claim of the step is exact, -1 if any is wrong, `neutral` if none."""
    claims = arithmetic_claims(step)
    if not claims:
        return float(neutral)
    for a, op, b, c in claims:
        if op == "/" and b == 0:
            return -1.0
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
        if value != c:
            return -1.0
    return 1.0


class ArithmeticPRM:
    """The deterministic verifier used when `shaper.prm.path` is null (tests, CPU runs)."""

    def __init__(self, neutral_reward: float = 0.0):
        self.neutral = float(neutral_reward)

    def __call__(self, contexts: list[str], steps: list[list[str]]) -> list[list[float]]:
        return [[arithmetic_step_reward(s, self.neutral) for s in row] for row in steps]


class ModelPRM:
    """A token-classification PRM from a save_pretrained directory (see the module docstring)."""

    def __init__(self, cfg, device="cpu"):
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        from calmrl.policy.loading import DTYPES

        self.tokenizer = AutoTokenizer.from_pretrained(cfg.path, trust_remote_code=bool(cfg.trust_remote_code))
        self.model = AutoModelForTokenClassification.from_pretrained(
            cfg.path,
            dtype=DTYPES[str(cfg.dtype)],
            trust_remote_code=bool(cfg.trust_remote_code),
            use_safetensors=True,
        )
        self.model.to(device).eval().requires_grad_(False)
        labels = self.model.config.num_labels
        for key in ("correct_label", "wrong_label"):
            if not 0 <= int(cfg[key]) < labels:
                raise ValueError(f"shaper.prm.{key}={cfg[key]} but the PRM at {cfg.path} has {labels} labels")
        self.correct, self.wrong = int(cfg.correct_label), int(cfg.wrong_label)
        self.separator = self.tokenizer(cfg.step_separator, add_special_tokens=False)["input_ids"]
        if not self.separator:
            raise ValueError(f"shaper.prm.step_separator={cfg.step_separator!r} encodes to no tokens")
        self.max_length, self.batch_size = int(cfg.max_length), int(cfg.batch_size)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def encode(self, context: str, steps: list[str]) -> tuple[list[int], list[int]]:
        """(input ids, read positions): context, then each step + separator; position = the separator's last token.

        Longer than max_length: the first tokens are dropped; a step whose separator fell off reads position -1.
        """
        enc = self.tokenizer
        ids = list(enc(context, add_special_tokens=False)["input_ids"]) if context else []
        positions = []
        for step in steps:
            ids += enc(step, add_special_tokens=False)["input_ids"] + self.separator
            positions.append(len(ids) - 1)
        cut = max(0, len(ids) - self.max_length)
        return ids[cut:], [p - cut if p >= cut else -1 for p in positions]

    @torch.no_grad()
    def __call__(self, contexts: list[str], steps: list[list[str]]) -> list[list[float]]:
        encoded = [self.encode(c, s) for c, s in zip(contexts, steps, strict=True)]
        out: list[list[float]] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            width = max(1, max(len(ids) for ids, _ in chunk))
            input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, (ids, _) in enumerate(chunk):
                input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention[b, : len(ids)] = 1
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            probs = torch.softmax(logits.float(), dim=-1).cpu()  # [B, T, labels]
            reward = probs[..., self.correct] - probs[..., self.wrong]  # [B, T]
            for b, (_, positions) in enumerate(chunk):
                out.append([float(reward[b, p]) if p >= 0 else 0.0 for p in positions])
        return out


# ---------------------------------------------------------------- the shaper
class PRMMinFormShaper:
    """Fills `batch.token_rewards` with the min-form PRM step rewards and `batch.token_reward_mask` with their tokens."""

    def __init__(self, cfg, ctx: ShaperContext):
        self.temperature = float(cfg.temperature)
        self.tokenizer = ctx.tokenizer
        self.prm = ModelPRM(cfg.prm, ctx.device) if cfg.prm.path else ArithmeticPRM(cfg.prm.neutral_reward)

    def __call__(self, batch: Batch, trajectories: list[Trajectory]) -> Batch:
        rows = [s for t in trajectories for s in t.steps]
        if len(rows) != len(batch):
            raise ValueError(f"the batch has {len(batch)} rows but the trajectories {len(rows)} steps")
        contexts, steps, ends = [], [], []
        for s in rows:
            text, char_ends = token_char_ends(s.response_ids, self.tokenizer)
            row_steps, row_ends = step_end_tokens(text, char_ends)
            steps.append(row_steps)
            ends.append(row_ends)
            contexts.append(self.tokenizer.decode(s.prompt_ids, skip_special_tokens=True))
        scores = self.prm(contexts, steps)

        n, k = len(rows), max([len(e) for e in ends] + [1])
        r = torch.zeros(n, k)
        mask = torch.zeros(n, k, dtype=torch.bool)
        cols = torch.zeros(n, k, dtype=torch.long)
        for i, (row_scores, row_ends) in enumerate(zip(scores, ends, strict=True)):
            r[i, : len(row_scores)] = torch.tensor(row_scores, dtype=torch.float32)
            mask[i, : len(row_ends)] = True
            cols[i, : len(row_ends)] = torch.tensor(row_ends, dtype=torch.long)
        shaped = minform_rewards(r, mask, self.temperature)
        return place_step_rewards(batch, shaped, mask, cols)


def place_step_rewards(batch: Batch, shaped: torch.Tensor, step_mask: torch.Tensor, step_ends: torch.Tensor) -> Batch:
    """Put shaped[n, i] on response token step_ends[n, i] (an index into row n's response) of each row.

    shaped, step_mask, step_ends: [N, K]. Adds to any token rewards already in the batch and marks the tokens
    in `batch.token_reward_mask` [N, L] (bool).
    """
    response_mask = batch.response_mask
    n, width = response_mask.shape
    first = torch.argmax((response_mask > 0).long(), dim=1)  # [N] first response column
    rows = torch.arange(n).unsqueeze(1).expand_as(step_ends)[step_mask]
    cols = (first.unsqueeze(1) + step_ends)[step_mask]
    token_rewards = torch.zeros(n, width)
    token_rewards.index_put_((rows, cols), shaped[step_mask].float(), accumulate=True)  # two steps on one token add
    token_mask = torch.zeros(n, width, dtype=torch.bool)
    token_mask[rows, cols] = True
    if (response_mask[rows, cols] == 0).any():
        raise ValueError("a step end fell outside its row's response tokens")
    if batch.token_rewards is not None:
        token_rewards = token_rewards + batch.token_rewards
        if batch.token_reward_mask is not None:
            token_mask = token_mask | batch.token_reward_mask
    batch.token_rewards, batch.token_reward_mask = token_rewards, token_mask
    return batch


@SHAPERS.register("prm_minform")
def _prm_minform(cfg, ctx: ShaperContext) -> PRMMinFormShaper:
    return PRMMinFormShaper(cfg, ctx)
