import copy

import pytest
import torch
from omegaconf import OmegaConf

from calmrl.data import Step, Trajectory, build_batch
from calmrl.learners.torch import TorchLearner, token_logprobs

LEARNER = OmegaConf.create({"micro_batch_size": 2, "max_grad_norm": 1.0, "weight_decay": 0.0})


def algo_cfg(**kw):
    base = {
        "lr": 1e-2,
        "loss": "ppo_clip",
        "clip_ratio": 0.2,
        "kl_coef": 0.0,
        "ppo_epochs": 1,
        "minibatch_size": 64,
    }
    return OmegaConf.create({**base, **kw})


def one_step_batch(model, tok, responses, advantages):
    """Rows with a shared prompt and one-token responses; old log-probs from the current model."""
    prompt = tok("task : reach the goal . action :", add_special_tokens=False)["input_ids"]
    trajs = []
    for i, word in enumerate(responses):
        rid = tok(" " + word, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + rid])
        with torch.no_grad():
            lp = token_logprobs(model, ids, torch.ones_like(ids))[0, len(prompt) :].tolist()
        trajs.append(Trajectory(uid=0, seed=0, task="t", steps=[Step(prompt, rid, lp, word, word, 0.0, f"s{i}")]))
    batch = build_batch(trajs, tok.pad_token_id)
    batch.advantages = batch.response_mask * torch.tensor(advantages).unsqueeze(1)
    return batch


def response_logprob(model, batch, row):
    lp = token_logprobs(model, batch.input_ids[row : row + 1], batch.attention_mask[row : row + 1])
    return (lp * batch.response_mask[row]).sum().item()


@pytest.mark.parametrize("loss", ["ppo_clip", "reinforce"])
def test_update_raises_positive_and_lowers_negative_advantage(tiny_policy, loss):
    model, tok = tiny_policy
    batch = one_step_batch(model, tok, ["north", "south"], [1.0, -1.0])
    before = [response_logprob(model, batch, r) for r in range(2)]
    learner = TorchLearner(model, algo_cfg(loss=loss), LEARNER)
    metrics = learner.update(batch)
    after = [response_logprob(model, batch, r) for r in range(2)]
    assert after[0] > before[0] and after[1] < before[1]
    assert metrics["loss/skipped_steps"] == 0 and metrics["loss/optimizer_steps"] == 1


def test_minibatches_and_epochs_count_optimizer_steps(tiny_policy):
    model, tok = tiny_policy
    batch = one_step_batch(model, tok, ["north", "south", "east", "west", "north"], [1.0, -1.0, 0.5, 0.0, 0.2])
    m = TorchLearner(model, algo_cfg(minibatch_size=2, ppo_epochs=3), LEARNER).update(batch)
    assert m["loss/optimizer_steps"] == 9  # ceil(5 / 2) minibatches x 3 epochs


def test_non_finite_loss_skips_the_step_and_keeps_weights(tiny_policy):
    model, tok = tiny_policy
    batch = one_step_batch(model, tok, ["north", "south"], [1.0, -1.0])
    batch.advantages[0, batch.response_mask[0].bool()] = float("nan")
    before = copy.deepcopy(model.state_dict())
    learner = TorchLearner(model, algo_cfg(), LEARNER)
    metrics = learner.update(batch)
    assert metrics["loss/skipped_steps"] == 1 and metrics["loss/optimizer_steps"] == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not learner.optimizer.state  # no Adam moments polluted by the bad step


def test_kl_to_reference_is_zero_at_start_and_pulls_back(tiny_policy):
    model, tok = tiny_policy
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    batch = one_step_batch(model, tok, ["north", "south"], [0.0, 0.0])  # no policy gradient: only the KL acts
    learner = TorchLearner(model, algo_cfg(kl_coef=1.0), LEARNER, ref_model=ref)
    m = learner.update(batch)
    assert abs(m["loss/kl"]) < 1e-6
    with torch.no_grad():  # move away from the reference, then the KL term must be positive
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m2 = learner.update(batch)
    assert m2["loss/kl"] > 0


def test_kl_without_reference_is_an_error(tiny_policy):
    model, _ = tiny_policy
    with pytest.raises(ValueError, match="reference model"):
        TorchLearner(model, algo_cfg(kl_coef=0.1), LEARNER)


def test_token_entropy_matches_the_logits(tiny_policy):
    model, tok = tiny_policy
    ids = torch.tensor([tok("task : reach the goal . action : north", add_special_tokens=False)["input_ids"]])
    lp, entropy = token_logprobs(model, ids, torch.ones_like(ids), with_entropy=True)
    assert torch.equal(lp, token_logprobs(model, ids, torch.ones_like(ids)))
    with torch.no_grad():
        p = torch.softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    assert torch.allclose(entropy[0, 1:], -(p * p.log()).sum(-1), atol=1e-5) and entropy[0, 0] == 0


def test_entropy_bonus_raises_entropy_with_zero_advantages(tiny_policy):
    # with no advantage signal, the only gradient is the entropy bonus: the sampled tokens' distributions flatten
    model, tok = tiny_policy
    batch = one_step_batch(model, tok, ["north", "south", "east"], [0.0, 0.0, 0.0])

    def mean_entropy(m):
        with torch.no_grad():
            _, ent = token_logprobs(m, batch.input_ids, batch.attention_mask, with_entropy=True)
        return float((ent * batch.response_mask).sum() / batch.response_mask.sum())

    before = mean_entropy(model)
    # a small step: Adam's first update has a fixed size, which overshoots a tiny model already near uniform
    metrics = TorchLearner(model, algo_cfg(entropy_coef=0.5, lr=1e-4), LEARNER).update(batch)
    assert mean_entropy(model) > before
    assert metrics["loss/entropy"] == pytest.approx(before, rel=1e-4)  # logged: the entropy before the step
