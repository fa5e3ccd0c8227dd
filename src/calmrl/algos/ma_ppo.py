"""MA-PPO — PPO over macro actions (Chai et al., 2024, "MA-RLHF: Reinforcement Learning from Human Feedback
with Macro Actions", ICLR 2025; reference code ernie-research/MA-RLHF, DeepSpeed-Chat `ppo_trainer.py`).

Each response is cut into macro actions (runs of consecutive tokens); the critic still gives V_t at
every token, and credit is assigned per macro. For macro k with tokens t in k and weights w_t:

    V_k = sum_t w_t V_t / sum_t w_t            r_k = sum_t w_t r_t / sum_t w_t       (`macro_agg`)
    delta_k = r_k + gamma * V_{k+1} - V_k       A_k = sum_j (gamma * lam)^j * delta_{k+j}
    every token of macro k gets A_k (PPO clip per token); the critic regresses every token of k to
    R_k = A_k + V_k.

`macro_agg`: mean (w = 1, the paper's default "equal"), first (w = 1 on the macro's first token), last
(w = 1 on its last token, the paper's "unit"), position (w_j = 1/(j+1) for the j-th token, the paper's
"position"). The same weights aggregate values and rewards, as in the reference code.

Multi-turn convention (as `algo=ppo`): the response tokens of a trajectory's steps form one sequence;
a step's reward sits on its last response token (plus shaper `token_rewards`); the value after the
trajectory's last macro is 0. A macro never spans two steps: every step's first response token starts
one. With `last_token_macro` (the reference code's layout) each step's last response token is a macro of
its own, so the step reward lands undiluted in r_k under `mean` aggregation.

Termination (where macros start), a [N, L] bool over response tokens:
    ngram       every n tokens of a response (n = 5 in the paper; n = 1 is token-level PPO exactly)
    random      macro lengths from `random_lengths` ([1, 2, 3, 5, 10] as in the reference). With
                `random_repeat: k` (the reference's `repeat_times`) each row walks a random permutation of
                a pool holding every length k times; once the pool is used up, the rest of the response is
                one macro (the reference's "length infinity" tail). `random_repeat: null` draws lengths
                i.i.d. instead, which never run out. Torch's global generator (seeded by `seed`, restored on
                resume); the reference shuffles with Python's `random`.
    parse       a token whose text contains one of `parse_chars` (punctuation, newline) ends its macro.
                The algo sees token ids only, so the trainer builds the table "token id -> ends a macro"
                from the tokenizer once (`MacroTokenTable`) and passes it as `state`. (The reference parses
                each sentence with a constituency parser; see docs/algos/ma_ppo.md.)
    perplexity  token t starts a macro when the next token's perplexity is higher, ppl_{t+1} > ppl_t, i.e.
                log p_{t+1} < log p_t (the reference's `ppl_selection`): the token just before a rise opens
                a macro, which holds the rise and the non-increasing run after it. The reference scores
                tokens with the reference model; here with the sampling log-probs `old_logprobs`, which
                every batch carries.

Every rule then forces a start at each row's first response token and, with `last_token_macro`, makes
its last response token a macro of its own (the reference always does). Starts are a bool mask, so they
are unique and sorted by construction: the reference's boundary lists can repeat the last position
(e.g. ngram when n divides the response length minus one), which inserts an empty macro that cuts the
bootstrap; that is not reproduced.
"""

from __future__ import annotations

import torch

from calmrl.algos.ppo import trajectory_token_positions
from calmrl.algos.registry import register
from calmrl.algos.segments import discounted_reverse_cumsum, group_index, on_last_token

TERMINATIONS = ("ngram", "random", "parse", "perplexity")
AGGREGATIONS = ("mean", "first", "last", "position")


# ---------------------------------------------------------------- termination rules: [N, L] macro starts
def _response_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Index of each response token within its row's response (0, 1, ...); -1 elsewhere. [N, L] -> [N, L]."""
    mask = response_mask > 0
    return torch.where(mask, mask.long().cumsum(1) - 1, torch.full_like(mask, -1, dtype=torch.long))


def ngram_starts(response_mask: torch.Tensor, n: int) -> torch.Tensor:
    """Macro starts every n response tokens. response_mask: [N, L]. Returns [N, L] bool."""
    if n < 1:
        raise ValueError(f"ngram n must be >= 1, got {n}")
    idx = _response_index(response_mask)
    return (idx >= 0) & (idx % n == 0)


def random_starts(
    response_mask: torch.Tensor,
    lengths: list[int],
    generator: torch.Generator | None = None,
    repeat: int | None = None,
) -> torch.Tensor:
    """Macro lengths drawn from `lengths`, independently per row.

    response_mask: [N, L]. Returns [N, L] bool.
    repeat = k: each row takes the lengths in a random order from a pool holding every length k times
    (the reference's `randomized_ngram_selection` with `repeat_times` = k); after the pool is used up the
    rest of the response is one macro. repeat = None: i.i.d. uniform draws, L per row (enough: every
    length is >= 1), so the lengths never run out.
    """
    if not lengths or min(lengths) < 1:
        raise ValueError(f"random_lengths must be a non-empty list of lengths >= 1, got {list(lengths)}")
    if repeat is not None and repeat < 1:
        raise ValueError(f"random_repeat must be >= 1 or null, got {repeat}")
    n, width = response_mask.shape
    table = torch.tensor(list(lengths), dtype=torch.long)
    if repeat is None:
        drawn = table[torch.randint(len(lengths), (n, width), generator=generator)]  # [N, L]
        offsets = drawn.cumsum(1) - drawn  # exclusive cumsum: response index where each macro starts
    else:
        pool = table.repeat_interleave(int(repeat))  # [K]
        # argsort of uniform noise is a uniform random permutation per row, drawn for all rows at once
        order = torch.argsort(torch.rand(n, pool.numel(), generator=generator), dim=1)
        drawn = pool[order]  # [N, K]
        # The inclusive cumsum's last entry (the pool's total) is where the tail macro starts: the
        # reference records that boundary before it stops walking the pool.
        offsets = torch.cat([torch.zeros(n, 1, dtype=torch.long), drawn.cumsum(1)], dim=1)  # [N, K + 1]
    # starts_at[n, j] = a macro starts at response index j; offsets past the row land in a spill column
    starts_at = torch.zeros(n, width + 1, dtype=torch.bool)
    starts_at.scatter_(1, offsets.clamp(max=width), True)
    idx = _response_index(response_mask)
    return (idx >= 0) & starts_at.gather(1, idx.clamp(min=0))


def token_end_starts(input_ids: torch.Tensor, response_mask: torch.Tensor, ends_macro: torch.Tensor) -> torch.Tensor:
    """A response token whose id is flagged in `ends_macro` closes its macro; the next token starts one.

    input_ids: [N, L] int64; response_mask: [N, L]; ends_macro: [V] bool over the vocabulary. Returns [N, L] bool.
    """
    mask = response_mask > 0
    ends = ends_macro.to(torch.bool)[input_ids.clamp(0, ends_macro.numel() - 1)] & mask
    starts = torch.zeros_like(mask)
    starts[:, 1:] = ends[:, :-1] & mask[:, 1:]
    return starts


def perplexity_starts(logprobs: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Token t starts a macro when token t+1's perplexity is higher: ppl_{t+1} > ppl_t, i.e.
    log p_{t+1} < log p_t (the reference's `ppl_selection`; ppl = exp(-log p) is monotone, so comparing
    log-probs gives the same strict order without the exp).

    logprobs, response_mask: [N, L]. Returns [N, L] bool. The last response token of a row has no next
    token in its row, so it never starts a macro here (`finalize_starts` may make it one).
    """
    mask = response_mask > 0
    starts = torch.zeros_like(mask)
    starts[:, :-1] = mask[:, :-1] & mask[:, 1:] & (logprobs[:, 1:] < logprobs[:, :-1])
    return starts


def finalize_starts(starts: torch.Tensor, response_mask: torch.Tensor, last_token_macro: bool = True) -> torch.Tensor:
    """Restrict starts to response tokens, force one at each row's first response token (a macro never
    spans two steps) and, with `last_token_macro`, make each row's last response token a macro of its own.

    starts, response_mask: [N, L]. Returns [N, L] bool.
    """
    idx = _response_index(response_mask)
    out = (idx >= 0) & (starts.to(torch.bool) | (idx == 0))
    if last_token_macro:
        length = (response_mask > 0).sum(1, keepdim=True)
        out = out | ((idx >= 0) & (idx == length - 1))
    return out


def macro_starts(
    termination: str,
    response_mask: torch.Tensor,
    *,
    input_ids: torch.Tensor | None = None,
    logprobs: torch.Tensor | None = None,
    n: int = 5,
    lengths: list[int] | tuple[int, ...] = (1, 2, 3, 5, 10),
    repeat: int | None = None,
    ends_macro: torch.Tensor | None = None,
    last_token_macro: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Macro starts [N, L] bool for a termination rule (see the module docstring), finalized."""
    if termination == "ngram":
        starts = ngram_starts(response_mask, n)
    elif termination == "random":
        starts = random_starts(response_mask, list(lengths), generator, repeat)
    elif termination == "parse":
        if ends_macro is None or input_ids is None:
            raise ValueError(
                "termination=parse needs input_ids and the tokenizer's macro-ending token table "
                "(the trainer passes it as state=MacroTokenTable)"
            )
        starts = token_end_starts(input_ids, response_mask, ends_macro)
    elif termination == "perplexity":
        if logprobs is None:
            raise ValueError("termination=perplexity needs the sampling log-probs")
        starts = perplexity_starts(logprobs, response_mask)
    else:
        raise ValueError(f"termination must be one of {TERMINATIONS}, got {termination!r}")
    return finalize_starts(starts, response_mask, last_token_macro)


# ---------------------------------------------------------------- macro-level GAE
def macro_gae_advantages(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    starts: torch.Tensor,
    traj: torch.Tensor,
    step: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    agg: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over each trajectory's macro-action sequence, broadcast back to the macros' tokens.

    token_rewards, values, response_mask: [N, L]; starts: [N, L] bool, True where a macro starts (each
    row's first response token is forced to start one); traj, step: [N]. Returns (advantages [N, L],
    returns [N, L]): A_k and R_k = A_k + V_k on every token of macro k, zero outside the response mask.
    With every response token a macro of its own this is `ppo.gae_advantages` exactly.
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"macro_agg must be one of {AGGREGATIONS}, got {agg!r}")
    advantages = torch.zeros_like(response_mask, dtype=torch.float32)
    returns = torch.zeros_like(response_mask, dtype=torch.float32)
    if not bool((response_mask > 0).any()):
        return advantages, returns
    starts = finalize_starts(starts, response_mask, last_token_macro=False)
    rows, cols, seq, pos = trajectory_token_positions(response_mask, traj, step)
    # Tokens in sequence order (trajectory, then position): a macro is a run of tokens, so a cumsum of
    # the start flags numbers the macros; each trajectory's first token starts a row, hence a macro.
    dense_seq, _ = group_index(seq)
    order = torch.argsort(dense_seq * (int(pos.max()) + 1) + pos)
    rows, cols, seq, dense_seq = rows[order], cols[order], seq[order], dense_seq[order]
    is_start = starts[rows, cols]
    macro = torch.cumsum(is_start.long(), 0) - 1  # [M] global macro id of each token
    num_macros = int(macro[-1]) + 1
    token_index = torch.arange(macro.numel())
    first_token = token_index[is_start]  # [K] sorted index of each macro's first token
    j = token_index - first_token[macro]  # index of the token inside its macro

    if agg == "mean":
        w = torch.ones(macro.numel())
    elif agg == "first":
        w = (j == 0).float()
    elif agg == "last":
        is_last = torch.ones(macro.numel(), dtype=torch.bool)
        is_last[:-1] = macro[1:] != macro[:-1]
        w = is_last.float()
    else:  # position
        w = 1.0 / (j + 1).float()
    r = token_rewards[rows, cols].float()
    v = values[rows, cols].float()
    weight = torch.zeros(num_macros).index_add_(0, macro, w)
    r_macro = torch.zeros(num_macros).index_add_(0, macro, w * r) / weight
    v_macro = torch.zeros(num_macros).index_add_(0, macro, w * v) / weight

    # Position of each macro inside its trajectory: its id minus the id of the trajectory's first macro.
    macro_seq = seq[first_token]  # [K]
    macro_dense = dense_seq[first_token]
    num_seq = int(macro_dense.max()) + 1
    first_macro = torch.full((num_seq,), num_macros, dtype=torch.long).scatter_reduce_(
        0, macro_dense, torch.arange(num_macros), reduce="amin"
    )
    macro_pos = torch.arange(num_macros) - first_macro[macro_dense]
    # V_{k+1}: the next macro of the same trajectory, 0 after its last macro (as in ppo.gae_advantages).
    grid = torch.zeros(num_seq, int(macro_pos.max()) + 2)
    grid[macro_dense, macro_pos] = v_macro
    v_next = grid[macro_dense, macro_pos + 1]
    delta = r_macro + gamma * v_next - v_macro
    adv = discounted_reverse_cumsum(delta, macro_seq, macro_pos, gamma * lam)
    advantages[rows, cols] = adv[macro]
    returns[rows, cols] = (adv + v_macro)[macro]
    return advantages, returns


# ---------------------------------------------------------------- the parse table and the registered algo
class MacroTokenTable:
    """`algo=ma_ppo` state: which token ids end a macro under termination=parse, built once from the
    tokenizer (a token ends a macro when its decoded text contains one of `cfg.parse_chars`).

    Nothing to learn or checkpoint; the trainer builds it (see `calmrl.algos.registry.AlgoState`).
    """

    holds_model = False  # a table from the tokenizer: it stays with the loop, on any placement

    def __init__(self, cfg, tokenizer=None, **_context):
        self.ends_macro: torch.Tensor | None = None
        if str(cfg.get("termination", "ngram")) == "parse":
            if tokenizer is None:
                raise ValueError("termination=parse needs the tokenizer to find the macro-ending tokens")
            self.ends_macro = self.from_tokenizer(tokenizer, str(cfg.parse_chars))

    @staticmethod
    def from_tokenizer(tokenizer, chars: str) -> torch.Tensor:
        """[V] bool: token id i's text contains one of `chars`."""
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
        return torch.tensor([any(c in t for c in chars) for t in texts], dtype=torch.bool)

    def begin(self, trajectories, batch, it: int) -> list[list[str]]:
        return []

    def end(self, responses) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


@register("ma_ppo", requires=("values",), reads_token_rewards=True, state=MacroTokenTable)
def ma_ppo(batch, cfg, state: MacroTokenTable | None = None) -> torch.Tensor:
    """advantages [N, L] from macro-level GAE; also fills batch.returns [N, L] (each token's macro return)."""
    if batch.values is None:
        raise ValueError("ma_ppo needs critic values; the trainer fills batch.values from the critic")
    starts = macro_starts(
        str(cfg.termination),
        batch.response_mask,
        input_ids=batch.input_ids,
        logprobs=batch.old_logprobs,
        n=int(cfg.ngram),
        lengths=list(cfg.random_lengths),
        # `get`: a hand-built config without the key (the schema always has it) draws i.i.d.
        repeat=cfg.get("random_repeat"),
        ends_macro=state.ends_macro if state is not None else None,
        last_token_macro=bool(cfg.last_token_macro),
    )
    rewards = on_last_token(batch.rewards, batch.response_mask)
    if batch.token_rewards is not None:
        rewards = rewards + batch.token_rewards * batch.response_mask
    advantages, returns = macro_gae_advantages(
        rewards,
        batch.values,
        batch.response_mask,
        starts,
        batch.traj,
        batch.step,
        gamma=cfg.gamma,
        lam=cfg.lam,
        agg=str(cfg.macro_agg),
    )
    batch.returns = returns
    return advantages
