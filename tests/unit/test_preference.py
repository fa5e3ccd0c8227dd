import json

import pytest
import torch
from omegaconf import OmegaConf

from calmrl.errors import ConfigError
from calmrl.learners.torch import response_logprobs
from calmrl.preference import (
    PreferencePair,
    compute_reference,
    load_or_compute_reference,
    load_preference_data,
    pair_order,
    split_pairs,
    templated_prompt_ids,
    tokenize_pairs,
)

ROWS = [{"prompt": f"goal north {i}", "chosen": " north", "rejected": " south"} for i in range(1, 9)]


def test_jsonl_and_message_lists(tmp_path):
    f = tmp_path / "p.jsonl"
    rows = ROWS[:2] + [
        {
            "prompt": "x",
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pairs, held = load_preference_data(f)
    assert held is None and len(pairs) == 3
    assert pairs[0] == PreferencePair("goal north 1", " north", " south")
    assert (pairs[2].chosen, pairs[2].rejected) == ("yes", "no")
    f.write_text(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(ConfigError, match="row 0 has no rejected"):
        load_preference_data(f)


def test_hf_layouts(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "pairs.parquet"))
    pairs, held = load_preference_data(tmp_path / "pairs.parquet")
    assert [p.prompt for p in pairs] == [r["prompt"] for r in ROWS] and held is None

    datasets.DatasetDict({"train": ds.select(range(6)), "test": ds.select(range(6, 8))}).save_to_disk(
        str(tmp_path / "saved")
    )
    pairs, held = load_preference_data(tmp_path / "saved")
    assert len(pairs) == 6 and [p.prompt for p in held] == ["goal north 7", "goal north 8"]

    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    ds.select(range(5)).to_json(str(hub / "train.jsonl"))
    ds.select(range(5, 8)).to_json(str(hub / "test.jsonl"))
    pairs, held = load_preference_data(tmp_path / "hub")
    assert len(pairs) == 5 and len(held) == 3


def test_split_is_seeded_disjoint_and_complete():
    items = list(range(20))
    train, held = split_pairs(items, 0.25)
    assert len(held) == 5 and sorted(train + held) == items
    assert split_pairs(items, 0.25) == (train, held)
    assert split_pairs(items, 0.0) == (items, [])
    with pytest.raises(ConfigError):
        split_pairs([1], 0.5)


def test_pair_order_visits_every_pair_once_per_epoch_and_is_resumable():
    n, b = 7, 3
    stream = [i for it in range(1, 8) for i in pair_order(0, it, b, n)]  # 21 positions = 3 epochs
    for e in range(3):
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n))
    assert pair_order(0, 5, b, n) == stream[12:15]  # iteration 5 alone (a resumed run) is the same
    assert stream[:n] != stream[n : 2 * n]  # a new permutation every epoch
    assert pair_order(1, 1, b, n) != pair_order(0, 1, b, n) or pair_order(1, 2, b, n) != pair_order(0, 2, b, n)


def test_tokenize_truncates_prompt_from_the_left_and_response_at_the_end(tiny_policy):
    _, tok = tiny_policy
    pairs = [PreferencePair("reach the goal . now : goal north", " north east west", " south")]
    data = tokenize_pairs(pairs, tok, max_length=5, max_prompt_length=3)
    full = tok("reach the goal . now : goal north", add_special_tokens=False)["input_ids"]
    assert data.prompt[0] == full[-3:]
    assert data.chosen[0] == tok(" north east", add_special_tokens=False)["input_ids"]  # 2 tokens of room left
    assert data.rejected[0] == tok(" south", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_response_logprobs_ignore_padding(tiny_policy):
    from calmrl.learners.torch import token_logprobs

    model, tok = tiny_policy
    prompts = [[5, 6, 7], [8]]
    responses = [[9, 10], [11, 12, 13, 14]]
    batched = response_logprobs(model, prompts, responses, tok.pad_token_id, batch_size=2)
    for p, r, got in zip(prompts, responses, batched, strict=True):
        ids = torch.tensor([p + r])
        alone = token_logprobs(model, ids, torch.ones_like(ids))[0, len(p) :]
        assert torch.allclose(got, alone, atol=1e-5)


def test_reference_cache_is_computed_once_and_keyed(tiny_policy, tmp_path):
    model, tok = tiny_policy
    pairs = [PreferencePair("goal north", " north", " south"), PreferencePair("goal west", " west", " east")]
    data = tokenize_pairs(pairs, tok, 64, 32)
    cfg = OmegaConf.create(
        {"max_prompt_length": 32, "better_template": "better {prompt}", "worse_template": "{prompt}"}
    )
    calls = []

    def compute():
        calls.append(1)
        return compute_reference(model, tok, pairs, data, cfg, batch_size=4)

    path = tmp_path / "ref.safetensors"
    first, cached = load_or_compute_reference(path, "k1", compute)
    assert not cached and len(calls) == 1
    again, cached = load_or_compute_reference(path, "k1", compute)
    assert cached and len(calls) == 1
    assert torch.equal(again.chosen, first.chosen) and all(
        torch.equal(a, b) for a, b in zip(again.rejected_rewards, first.rejected_rewards, strict=True)
    )
    _, cached = load_or_compute_reference(path, "k2", compute, message=lambda m: None)
    assert not cached and len(calls) == 2
    # sequence log-probs are sums of the token log-probs; T-REG rewards have one value per response token, in range
    lp = response_logprobs(model, data.prompt, data.chosen, tok.pad_token_id, 4)
    assert torch.allclose(first.chosen, torch.stack([x.sum() for x in lp]))
    assert [len(r) for r in first.chosen_rewards] == [len(c) for c in data.chosen]
    assert all(((r > -0.5) & (r < 0.5)).all() for r in first.chosen_rewards + first.rejected_rewards)


# ---------------------------------------------------------------- T-REG's contrastive prompts at the length limit
# The wrapped prompt must fit `algo.max_prompt_length`; cutting the joined text from the left (as an earlier
# version did) drops the instruction first, and a prompt that fills the limit was then scored identically after
# "improve" and "worsen": every r_hat_t exactly 0, the pair trained as plain DPO.
TREG_BETTER, TREG_WORSE = "north north {prompt}", "south south {prompt}"  # words of the tiny policy's vocabulary
TREG_PAIR = PreferencePair("goal north east west", " north", " south")


def _token_rewards(model, tok, max_prompt_length: int):
    data = tokenize_pairs([TREG_PAIR], tok, max_length=64, max_prompt_length=max_prompt_length)
    cfg = OmegaConf.create(
        {"max_prompt_length": max_prompt_length, "better_template": TREG_BETTER, "worse_template": TREG_WORSE}
    )
    ref = compute_reference(model, tok, [TREG_PAIR], data, cfg, batch_size=4)
    return ref.chosen_rewards[0].tolist() + ref.rejected_rewards[0].tolist()


def _prompt_len(tok) -> int:
    return len(tok(TREG_PAIR.prompt, add_special_tokens=False)["input_ids"])


def test_treg_rewards_are_nonzero_when_the_instruction_fits(tiny_policy):
    model, tok = tiny_policy
    assert _prompt_len(tok) >= 2
    rewards = _token_rewards(model, tok, max_prompt_length=_prompt_len(tok) + 8)
    assert any(abs(r) > 0 for r in rewards)  # the two instructions differ, so the reference scores differ


def test_treg_instruction_survives_a_prompt_at_the_length_limit(tiny_policy):
    model, tok = tiny_policy
    rewards = _token_rewards(model, tok, max_prompt_length=_prompt_len(tok))
    assert any(abs(r) > 0 for r in rewards)


def test_templated_prompt_keeps_the_instruction_and_the_prompt_end(tiny_policy):
    _, tok = tiny_policy
    ids = templated_prompt_ids(tok, TREG_BETTER, TREG_PAIR.prompt, max_length=_prompt_len(tok))
    instruction = tok("north north ", add_special_tokens=False)["input_ids"]
    assert len(ids) == _prompt_len(tok) and ids[: len(instruction)] == instruction
    assert tok.decode(ids).endswith("west")  # the prompt keeps its end
    fits = templated_prompt_ids(tok, TREG_BETTER, TREG_PAIR.prompt, max_length=64)  # no cut: the joined text's tokens
    assert fits == tok(TREG_BETTER.format(prompt=TREG_PAIR.prompt), add_special_tokens=False)["input_ids"]
