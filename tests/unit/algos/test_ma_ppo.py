import pytest
import torch
from omegaconf import OmegaConf

from calmrl.algos import ALGOS
from calmrl.algos.ma_ppo import (
    MacroTokenTable,
    finalize_starts,
    macro_gae_advantages,
    macro_starts,
    ngram_starts,
    perplexity_starts,
    random_starts,
    token_end_starts,
)
from calmrl.algos.ppo import gae_advantages
from calmrl.data import Step, Trajectory, build_batch


def random_batch(seed: int, num_traj: int = 5, max_steps: int = 4, width: int = 12):
    """Random multi-step trajectories, rows shuffled: (rewards, values, mask, traj, step), all [N, L] / [N]."""
    g = torch.Generator().manual_seed(seed)
    masks, trajs, steps = [], [], []
    for t in range(num_traj):
        for s in range(int(torch.randint(1, max_steps + 1, (1,), generator=g))):
            prompt = int(torch.randint(1, 4, (1,), generator=g))
            resp = int(torch.randint(1, width - prompt + 1, (1,), generator=g))
            m = torch.zeros(width)
            m[prompt : prompt + resp] = 1
            masks.append(m)
            trajs.append(t)
            steps.append(s)
    perm = torch.randperm(len(masks), generator=g)
    mask = torch.stack(masks)[perm]
    rewards = torch.randn(mask.shape, generator=g) * mask
    values = torch.randn(mask.shape, generator=g) * mask
    return rewards, values, mask, torch.tensor(trajs)[perm], torch.tensor(steps)[perm]


def one_row(values, rewards):
    """One trajectory, one step: prompt of 1 token, then len(values) response tokens."""
    n = len(values)
    mask = torch.tensor([[0.0] + [1.0] * n])
    v = torch.tensor([[0.0, *values]])
    r = torch.tensor([[0.0, *rewards]])
    return r, v, mask, torch.tensor([0]), torch.tensor([0])


# ---------------------------------------------------------------- the METHODS.md invariant: n = 1 is token PPO
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.95, 0.0)])
@pytest.mark.parametrize("agg", ["mean", "first", "last", "position"])
def test_ngram_one_reproduces_token_level_gae_exactly(seed, gamma, lam, agg):
    rewards, values, mask, traj, step = random_batch(seed)
    starts = macro_starts("ngram", mask, n=1, last_token_macro=False)
    adv, ret = macro_gae_advantages(rewards, values, mask, starts, traj, step, gamma=gamma, lam=lam, agg=agg)
    ref_adv, ref_ret = gae_advantages(rewards, values, mask, traj, step, gamma=gamma, lam=lam)
    assert torch.equal(adv, ref_adv)
    assert torch.equal(ret, ref_ret)


def test_registered_ma_ppo_with_n1_equals_registered_ppo():
    steps = [
        Step([1], [2, 3, 4], [-0.1, -0.2, -0.3], "a", "a", 0.5, "s0"),
        Step([1, 4], [5, 6], [-0.3, -0.4], "b", "b", 1.0, "s1"),
    ]
    other = [Step([1, 2], [5], [-0.3], "c", "c", -1.0, "s0")]
    batch = build_batch([Trajectory(0, 0, "t", steps), Trajectory(0, 1, "t", other)], pad_token_id=0)
    batch.values = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(3))
    batch.values = batch.values * batch.response_mask
    ppo_adv = ALGOS.get("ppo")(batch, OmegaConf.create({"gamma": 0.9, "lam": 0.7}))
    ppo_ret = batch.returns.clone()
    cfg = OmegaConf.create(
        {
            "gamma": 0.9,
            "lam": 0.7,
            "termination": "ngram",
            "ngram": 1,
            "random_lengths": [1],
            "macro_agg": "mean",
            "last_token_macro": True,
        }
    )
    fn = ALGOS.get("ma_ppo")
    assert fn.requires == {"values"} and fn.reads_token_rewards and fn.state is MacroTokenTable
    adv = fn(batch, cfg)
    assert torch.equal(adv, ppo_adv) and torch.equal(batch.returns, ppo_ret)


# ---------------------------------------------------------------- hand-computed small cases
def test_hand_computed_two_macros_mean():
    # 6 tokens, n = 3, no separate last-token macro: macros [1,2,3] and [4,5,6] (values), reward 1 at the end.
    r, v, mask, traj, step = one_row([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 1])
    starts = macro_starts("ngram", mask, n=3, last_token_macro=False)
    assert starts[0].tolist() == [False, True, False, False, True, False, False]
    adv, ret = macro_gae_advantages(r, v, mask, starts, traj, step, gamma=1.0, lam=0.5, agg="mean")
    # V = [2, 5], r = [0, 1/3]; delta_2 = 1/3 - 5, delta_1 = 0 + 5 - 2 = 3; A_2 = -14/3, A_1 = 3 + .5 * A_2 = 2/3
    a1, a2 = 2 / 3, -14 / 3
    assert adv[0].tolist() == pytest.approx([0, a1, a1, a1, a2, a2, a2])
    assert ret[0].tolist() == pytest.approx([0, a1 + 2, a1 + 2, a1 + 2, a2 + 5, a2 + 5, a2 + 5])


def test_hand_computed_last_token_is_its_own_macro():
    r, v, mask, traj, step = one_row([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 1])
    starts = macro_starts("ngram", mask, n=3, last_token_macro=True)
    assert starts[0].nonzero().flatten().tolist() == [1, 4, 6]
    adv, ret = macro_gae_advantages(r, v, mask, starts, traj, step, gamma=1.0, lam=0.5, agg="mean")
    # V = [2, 4.5, 6], r = [0, 0, 1]: deltas [2.5, 1.5, -5] -> A_3 = -5, A_2 = 1.5 - 2.5 = -1, A_1 = 2.5 - .5 = 2
    assert adv[0].tolist() == pytest.approx([0, 2, 2, 2, -1, -1, -5])
    assert ret[0].tolist() == pytest.approx([0, 4, 4, 4, 3.5, 3.5, 1])


@pytest.mark.parametrize(
    "agg, v_macro, r_macro",
    [
        ("first", [1.0, 4.0], [0.0, 0.0]),
        ("last", [3.0, 6.0], [0.0, 1.0]),
        ("position", [(1 + 2 / 2 + 3 / 3) / (11 / 6), (4 + 5 / 2 + 6 / 3) / (11 / 6)], [0.0, (1 / 3) / (11 / 6)]),
    ],
)
def test_aggregations_weight_the_macro_tokens(agg, v_macro, r_macro):
    r, v, mask, traj, step = one_row([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 1])
    starts = macro_starts("ngram", mask, n=3, last_token_macro=False)
    adv, _ = macro_gae_advantages(r, v, mask, starts, traj, step, gamma=1.0, lam=0.0, agg=agg)
    # lam = 0: A_k = delta_k = r_k + V_{k+1} - V_k
    a1 = r_macro[0] + v_macro[1] - v_macro[0]
    a2 = r_macro[1] - v_macro[1]
    assert adv[0].tolist() == pytest.approx([0, a1, a1, a1, a2, a2, a2])


def test_lambda_limits_over_macros():
    r, v, mask, traj, step = one_row([1, 2, 3, 4, 5, 6], [0.0, 0.0, 3.0, 0.0, 0.0, 6.0])
    starts = macro_starts("ngram", mask, n=3, last_token_macro=False)
    gamma = 0.9
    # mean: V = [2, 5], r = [1, 2]
    adv1, ret1 = macro_gae_advantages(r, v, mask, starts, traj, step, gamma=gamma, lam=1.0)
    # lam = 1: A_k = (discounted macro reward-to-go) - V_k: [1 + .9 * 2 - 2, 2 - 5]
    assert adv1[0].tolist() == pytest.approx([0, 0.8, 0.8, 0.8, -3, -3, -3])
    assert ret1[0, 1:].tolist() == pytest.approx([2.8] * 3 + [2.0] * 3)
    adv0, _ = macro_gae_advantages(r, v, mask, starts, traj, step, gamma=gamma, lam=0.0)
    # lam = 0: A_k = delta_k = r_k + gamma V_{k+1} - V_k: [1 + 4.5 - 2, 2 - 5]
    assert adv0[0].tolist() == pytest.approx([0, 3.5, 3.5, 3.5, -3, -3, -3])


def test_macros_never_span_steps_and_gae_flows_across_them():
    # one trajectory of two steps (rows shuffled), n larger than any response: one macro per step
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 0]], dtype=torch.float32)  # row 0 = step 1
    traj, step = torch.tensor([7, 7]), torch.tensor([1, 0])
    values = torch.tensor([[0, 0, 4.0, 6.0, 0], [0, 1.0, 2.0, 3.0, 0]])
    rewards = torch.tensor([[0, 0, 0, 1.0, 0], [0, 0, 0, 0.5, 0]])
    starts = macro_starts("ngram", mask, n=10, last_token_macro=False)
    assert starts.nonzero().tolist() == [[0, 2], [1, 1]]
    adv, ret = macro_gae_advantages(rewards, values, mask, starts, traj, step, gamma=1.0, lam=1.0)
    # step 0 macro: V = 2, r = 0.5 / 3; step 1 macro: V = 5, r = 0.5. lam = gamma = 1: A = reward-to-go - V
    assert adv[1, 1:4].tolist() == pytest.approx([0.5 / 3 + 0.5 - 2] * 3)
    assert adv[0, 2:4].tolist() == pytest.approx([0.5 - 5] * 2)
    assert ret[1, 1:4].tolist() == pytest.approx([0.5 / 3 + 0.5] * 3)
    assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0)


# ---------------------------------------------------------------- termination rules
def _starts_per_row(starts):
    return [row.nonzero().flatten().tolist() for row in starts]


@pytest.mark.parametrize(
    "termination, repeat",
    [("ngram", None), ("random", None), ("random", 1), ("perplexity", None), ("parse", None)],
)
def test_boundaries_are_unique_sorted_and_cover_each_response(termination, repeat):
    g = torch.Generator().manual_seed(0)
    _, _, mask, _, _ = random_batch(4, num_traj=8, width=30)
    ids = torch.randint(0, 50, mask.shape, generator=g)
    logprobs = -torch.rand(mask.shape, generator=g) * mask
    ends = torch.rand(50, generator=g) < 0.3
    starts = macro_starts(
        termination,
        mask,
        input_ids=ids,
        logprobs=logprobs,
        n=4,
        repeat=repeat,
        ends_macro=ends,
        generator=g,
        last_token_macro=True,
    )
    for row, cols in enumerate(_starts_per_row(starts)):
        resp = mask[row].nonzero().flatten().tolist()
        assert cols == sorted(set(cols))  # unique, ascending
        assert set(cols) <= set(resp)  # only on response tokens
        assert cols[0] == resp[0]  # the response's first token starts a macro
        assert resp[-1] in cols  # last_token_macro
        # macro lengths partition the response
        lengths = [b - a for a, b in zip(cols, cols[1:] + [resp[-1] + 1], strict=True)]
        assert sum(lengths) == len(resp) and min(lengths) >= 1


def test_ngram_starts_every_n_tokens():
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.float32)
    assert _starts_per_row(ngram_starts(mask, 3)) == [[1, 4, 7]]
    assert _starts_per_row(finalize_starts(ngram_starts(mask, 3), mask, last_token_macro=True)) == [[1, 4, 7]]
    assert _starts_per_row(finalize_starts(ngram_starts(mask, 5), mask, last_token_macro=True)) == [[1, 6, 7]]
    with pytest.raises(ValueError, match="n must be >= 1"):
        ngram_starts(mask, 0)


def test_random_lengths_come_from_the_list_and_the_generator_reproduces():
    mask = torch.zeros(64, 40)
    mask[:, 2:38] = 1
    a = random_starts(mask, [2, 5], torch.Generator().manual_seed(1))
    b = random_starts(mask, [2, 5], torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    seen = set()
    for cols in _starts_per_row(a):
        assert cols[0] == 2
        lengths = [y - x for x, y in zip(cols, cols[1:], strict=False)]
        assert set(lengths) <= {2, 5}
        seen |= set(lengths)
    assert seen == {2, 5}  # both lengths are drawn
    with pytest.raises(ValueError, match="random_lengths"):
        random_starts(mask, [0, 2])


def test_parse_starts_after_a_macro_ending_token():
    ids = torch.tensor([[9, 1, 3, 1, 1, 3, 1]])  # token 3 ends a macro (e.g. "."); the prompt token 9 does too
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1]], dtype=torch.float32)
    ends = torch.zeros(10, dtype=torch.bool)
    ends[[3, 9]] = True
    starts = token_end_starts(ids, mask, ends)
    assert _starts_per_row(starts) == [[3, 6]]  # after each "." inside the response, not after the prompt
    assert _starts_per_row(finalize_starts(starts, mask, last_token_macro=False)) == [[1, 3, 6]]


def test_perplexity_starts_a_macro_at_the_token_before_the_rise():
    # Row 0, columns 1-5 are the response (column 0 the prompt); ppl = exp(-log p):
    #   column    1      2      3      4      5
    #   log p   -1.0   -0.5   -2.0   -3.0   -0.1
    #   ppl     2.72   1.65   7.39  20.09   1.11
    # ppl rises from column 2 to 3 and from 3 to 4: the token before each rise, columns 2 and 3, starts a
    # macro. Row 1, columns 1-3 (then padding with a low log-prob that must not count as a rise):
    #   log p   -0.5   -0.2   -3.0  | -9.0  -9.0      ppl 1.65, 1.22, 20.09: the rise 2 -> 3 starts column 2.
    lp = torch.tensor([[0.0, -1.0, -0.5, -2.0, -3.0, -0.1], [0.0, -0.5, -0.2, -3.0, -9.0, -9.0]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.float32)
    assert _starts_per_row(perplexity_starts(lp, mask)) == [[2, 3], [2]]
    # Finalized as the reference does (first token opens, the last token is a macro of its own):
    # row 0 macros [1] [2] [3, 4] [5]; row 1 macros [1] [2] [3]. Starting at the risen token instead
    # (the old rule) gave [1, 2] [3] [4] [5] and [1, 2] [3].
    starts = macro_starts("perplexity", mask, logprobs=lp, last_token_macro=True)
    assert _starts_per_row(starts) == [[1, 2, 3, 5], [1, 2, 3]]
    assert _starts_per_row(macro_starts("perplexity", mask, logprobs=lp, last_token_macro=False)) == [
        [1, 2, 3],
        [1, 2],
    ]
    # The boundary moves the credit: values 1..5 on row 0, reward 1 on its last token, lam = 0 (A_k = delta_k).
    v = torch.tensor([[0.0, 1, 2, 3, 4, 5]])
    r = torch.tensor([[0.0, 0, 0, 0, 0, 1]])
    adv, _ = macro_gae_advantages(
        r, v, mask[:1], starts[:1], torch.tensor([0]), torch.tensor([0]), gamma=1.0, lam=0.0, agg="mean"
    )
    # V = [1, 2, 3.5, 5], r = [0, 0, 0, 1]: A = [2 - 1, 3.5 - 2, 5 - 3.5, 1 - 5]
    assert adv[0].tolist() == pytest.approx([0, 1, 1.5, 1.5, 1.5, -4])


# ---------------------------------------------------------------- the authors' loops, transcribed
def _reference_chunks(bounds: list[int], n: int) -> list[list[int]]:
    """MA-RLHF's split of one response (`modeling_macro_action`): chunk sizes are the gaps between the
    recorded macro starts plus a final chunk of 1, the last token. A repeated start gives a chunk of size
    0, an empty macro that owns no token; it is dropped here (calmrl has no such macro).

    bounds: macro starts as response indices, the last one n - 1. Returns the macros as lists of indices.
    """
    sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)] + [1]
    assert sum(sizes) == n
    macros, first = [], 0
    for size in sizes:
        if size:
            macros.append(list(range(first, first + size)))
        first += size
    return macros


def _reference_ppl_macros(ppl: list[float]) -> list[list[int]]:
    """`ppl_selection` for one response: walk neighbour pairs and record i whenever the perplexity goes up
    from token i to token i + 1; put token 0 in front if it is missing; close with the last index."""
    bounds = [i for i in range(len(ppl) - 1) if ppl[i + 1] > ppl[i]]
    if 0 not in bounds:
        bounds = [0, *bounds]
    return _reference_chunks([*bounds, len(ppl) - 1], len(ppl))


def _reference_fixed_macros(n: int, ngram: int) -> list[list[int]]:
    """`fixed_ngram_selection` for one n-token response: count tokens over all but the last one and record
    a start after every `ngram` of them; close with the last index (which may repeat the previous start)."""
    bounds, count = [0], 0
    for i in range(n - 1):
        count += 1
        if count == ngram:
            bounds.append(i + 1)
            count = 0
    return _reference_chunks([*bounds, n - 1], n)


def _reference_random_macros(n: int, shuffled: list[int]) -> list[list[int]]:
    """`randomized_ngram_selection` for one n-token response, given the already shuffled pool of lengths:
    the same walk as the fixed rule with the next pool entry as the target; when the pool is used up the
    walk stops and the rest is one macro up to the closing last index."""
    bounds, count, k = [0], 0, 0
    for i in range(n - 1):
        count += 1
        if count == shuffled[k]:
            bounds.append(i + 1)
            count, k = 0, k + 1
            if k == len(shuffled):
                break
    return _reference_chunks([*bounds, n - 1], n)


def _macros_per_row(starts: torch.Tensor, mask: torch.Tensor) -> list[list[list[int]]]:
    """calmrl's partition of each row's response, as lists of response indices (0 = first response token)."""
    out = []
    for row in range(mask.shape[0]):
        cols = mask[row].nonzero().flatten().tolist()
        assert bool(starts[row, cols[0]])
        macros = []
        for j, col in enumerate(cols):
            if starts[row, col]:
                macros.append([])
            macros[-1].append(j)
        out.append(macros)
    return out


def _random_rows(seed: int, rows: int = 60, width: int = 24):
    """[rows, width] masks: a prompt of 1-4 tokens, then a response of 1..rest tokens (row 0: exactly 1)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(rows, width)
    for r in range(rows):
        prompt = int(torch.randint(1, 5, (1,), generator=g))
        resp = 1 if r == 0 else int(torch.randint(1, width - prompt + 1, (1,), generator=g))
        mask[r, prompt : prompt + resp] = 1
    return mask, g


def test_perplexity_partitions_equal_the_reference_loop_on_random_rows():
    mask, g = _random_rows(11)
    logprobs = -3 * torch.rand(mask.shape, generator=g)  # garbage outside the response on purpose
    logprobs[::2] = (logprobs[::2] * 4).round() / 4  # every other row on a 0.25 grid: ties must not start macros
    starts = macro_starts("perplexity", mask, logprobs=logprobs, last_token_macro=True)
    ours = _macros_per_row(starts, mask)
    # the reference's perplexity of each response token, exp(cross-entropy) = exp(-log p), row by row
    ppl = torch.exp(-logprobs.double())
    reference = [_reference_ppl_macros(ppl[r][mask[r] > 0].tolist()) for r in range(mask.shape[0])]
    assert ours == reference
    assert sum(len(m) for m in ours) > 2 * mask.shape[0]  # the rows do have inner boundaries


@pytest.mark.parametrize("ngram", [1, 2, 3, 5])
def test_ngram_partitions_equal_the_reference_loop_on_random_rows(ngram):
    mask, _ = _random_rows(12)
    starts = macro_starts("ngram", mask, n=ngram, last_token_macro=True)
    lengths = mask.sum(1).long().tolist()
    assert _macros_per_row(starts, mask) == [_reference_fixed_macros(n, ngram) for n in lengths]


@pytest.mark.parametrize("repeat", [1, 3])
def test_random_repeat_partitions_equal_the_reference_loop_on_random_rows(repeat):
    mask, _ = _random_rows(13, width=40)
    lengths = [1, 2, 3, 5, 10]
    starts = macro_starts(
        "random",
        mask,
        lengths=lengths,
        repeat=repeat,
        generator=torch.Generator().manual_seed(4),
        last_token_macro=True,
    )
    # Replay the same draw to get each row's shuffled pool (random_starts takes a permutation per row as
    # the argsort of uniform noise), then walk it the reference's way.
    pool = torch.tensor(lengths).repeat_interleave(repeat)
    noise = torch.rand(mask.shape[0], pool.numel(), generator=torch.Generator().manual_seed(4))
    shuffled = pool[torch.argsort(noise, dim=1)].tolist()
    sizes = mask.sum(1).long().tolist()
    reference = [_reference_random_macros(n, shuffled[r]) for r, n in enumerate(sizes)]
    assert _macros_per_row(starts, mask) == reference
    if repeat == 1:  # a pool of 21 tokens: longer responses end in a tail macro past it
        assert any(len(m[-2]) > 10 for m in reference if len(m) > 1)


def test_random_repeat_uses_up_the_pool_then_one_tail_macro():
    mask = torch.zeros(1000, 40)
    mask[:, 1:39] = 1  # 38 response tokens; the pool [1, 1, 2, 2, 3, 3] covers 12
    starts = random_starts(mask, [1, 2, 3], torch.Generator().manual_seed(0), repeat=2)
    orders = set()
    for cols in _starts_per_row(starts):
        lengths = [b - a for a, b in zip(cols, [*cols[1:], 39], strict=True)]
        assert sorted(lengths[:6]) == [1, 1, 2, 2, 3, 3] and lengths[6:] == [26]
        orders.add(tuple(lengths[:6]))
    assert len(orders) == 90  # all 6! / (2! 2! 2!) orders of the pool are drawn
    with pytest.raises(ValueError, match="random_repeat"):
        random_starts(mask, [1, 2], repeat=0)


def test_macro_token_table_from_the_tiny_tokenizer(tiny_policy_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_policy_dir)
    cfg = OmegaConf.create({"termination": "parse", "parse_chars": ".\n"})
    table = MacroTokenTable(cfg, tokenizer=tok)
    assert table.ends_macro.shape == (len(tok),)
    dot = tok.convert_tokens_to_ids(".")
    word = tok(" north", add_special_tokens=False).input_ids
    assert len(word) == 1  # the tiny tokenizer makes every env word one token
    assert bool(table.ends_macro[dot]) and not bool(table.ends_macro[word[0]])
    assert MacroTokenTable(OmegaConf.create({"termination": "ngram"})).ends_macro is None


def test_registered_ma_ppo_needs_values_and_the_parse_table():
    steps = [Step([1], [2, 3, 4], [-0.1, -0.2, -0.3], "a", "a", 1.0, "s0")]
    batch = build_batch([Trajectory(0, 0, "t", steps)], pad_token_id=0)
    cfg = OmegaConf.create(
        {
            "gamma": 1.0,
            "lam": 1.0,
            "termination": "parse",
            "ngram": 5,
            "random_lengths": [1],
            "macro_agg": "mean",
            "last_token_macro": True,
        }
    )
    fn = ALGOS.get("ma_ppo")
    with pytest.raises(ValueError, match="critic values"):
        fn(batch, cfg)
    batch.values = torch.zeros_like(batch.response_mask)
    with pytest.raises(ValueError, match="termination=parse"):
        fn(batch, cfg)
    table = MacroTokenTable.__new__(MacroTokenTable)
    table.ends_macro = torch.tensor([False, False, True, False, False])  # token 2 ends a macro
    adv = fn(batch, cfg, state=table)
    # macros [2], [3], [4]; gamma = lam = 1 and V = 0: every token gets the reward-to-go 1
    assert adv[batch.response_mask.bool()].tolist() == [1.0, 1.0, 1.0]
    assert torch.equal(batch.returns, adv)
