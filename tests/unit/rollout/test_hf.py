import torch

from calmrl.learners.torch import token_logprobs
from calmrl.rollout import HFGenerator


def test_sampling_logprobs_match_a_forward_pass(tiny_policy):
    model, tok = tiny_policy
    torch.manual_seed(0)
    gen = HFGenerator(model, tok, max_new_tokens=4, temperature=1.0)
    prompts = ["task : reach the goal . now : goal 1 north . action :", "now : wall none . action :"]
    outs = gen(prompts)
    assert len(outs) == 2
    for o in outs:
        assert 1 <= len(o.response_ids) <= 4 and len(o.logprobs) == len(o.response_ids)
        if tok.eos_token_id in o.response_ids:
            assert o.response_ids.index(tok.eos_token_id) == len(o.response_ids) - 1
        ids = torch.tensor([o.prompt_ids + o.response_ids])
        lp = token_logprobs(model, ids, torch.ones_like(ids))[0, len(o.prompt_ids) :]
        assert torch.allclose(lp, torch.tensor(o.logprobs), atol=1e-4)


def test_temperature_scales_recorded_logprobs(tiny_policy):
    model, tok = tiny_policy
    torch.manual_seed(1)
    o = HFGenerator(model, tok, max_new_tokens=1, temperature=2.0)(["action :"])[0]
    ids = torch.tensor([o.prompt_ids + o.response_ids])
    logits = model(ids).logits[0, -2] / 2.0
    assert abs(torch.log_softmax(logits, -1)[o.response_ids[0]].item() - o.logprobs[0]) < 1e-4


def test_greedy_is_deterministic_and_left_padding_does_not_change_it(tiny_policy):
    model, tok = tiny_policy
    gen = HFGenerator(model, tok, max_new_tokens=3, temperature=0.0)
    short = "action :"
    alone = gen([short])[0]
    padded = gen([short, "task : reach the goal . now : goal 2 south 1 east . wall none . action :"])[0]
    assert alone.response_ids == padded.response_ids
    assert alone.prompt_ids == padded.prompt_ids == tok(short, add_special_tokens=False)["input_ids"]
