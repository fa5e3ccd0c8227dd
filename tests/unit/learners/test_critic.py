import copy

import torch
from omegaconf import OmegaConf

from calmrl.learners.critic import ValueModel, clipped_value_loss
from calmrl.learners.torch import TorchLearner


def test_clipped_value_loss_hand_computed():
    old = torch.tensor([[0.0, 0.0]])
    values = torch.tensor([[1.0, 0.1]])
    returns = torch.tensor([[2.0, 1.0]])
    mask = torch.ones(1, 2)
    # token 0: max((1-2)^2, (0.2-2)^2) = 3.24 ; token 1: max((0.1-1)^2, (0.1-1)^2) = 0.81
    assert abs(clipped_value_loss(values, old, returns, mask, clip=0.2).item() - 0.5 * (3.24 + 0.81) / 2) < 1e-6


def test_value_model_starts_at_zero_and_learns(tiny_policy_dir, tiny_policy):
    model, tok = tiny_policy
    critic = ValueModel.from_pretrained(tiny_policy_dir)
    ids = tok(["task : reach the goal . action : north"], return_tensors="pt", add_special_tokens=False)
    values = critic(ids["input_ids"], ids["attention_mask"])
    assert values.shape == ids["input_ids"].shape and torch.all(values == 0)

    # one learner update moves the response-token values toward the returns
    from calmrl.data import Step, Trajectory, build_batch

    prompt = ids["input_ids"][0, :-1].tolist()
    step = Step(prompt, [ids["input_ids"][0, -1].item()], [-1.0], "north", "north", 1.0, "s")
    batch = build_batch([Trajectory(uid=0, seed=0, task="t", steps=[step])], tok.pad_token_id)
    batch.values = torch.zeros_like(batch.response_mask)
    batch.returns = batch.response_mask.clone()  # target 1 on the response token
    batch.advantages = torch.zeros_like(batch.response_mask)
    algo = OmegaConf.create(
        {
            "lr": 1e-3,
            "critic_lr": 1e-2,
            "loss": "ppo_clip",
            "clip_ratio": 0.2,
            "kl_coef": 0.0,
            "ppo_epochs": 5,
            "minibatch_size": 8,
            "value_clip": 10.0,
        }
    )
    learner_cfg = OmegaConf.create({"micro_batch_size": 4, "max_grad_norm": 1.0, "weight_decay": 0.0})
    policy_before = copy.deepcopy(model.state_dict())
    learner = TorchLearner(model, algo, learner_cfg, critic=critic)
    metrics = learner.update(batch, train_policy=False)  # critic warm-up: the policy must not move
    assert metrics["critic/value_loss"] > 0 and metrics["loss/optimizer_steps"] == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, policy_before[k])
    after = learner.critic_values(batch)[batch.response_mask.bool()]
    assert after.item() > 0.05
    state = learner.optimizer_state()
    assert set(state) == {"policy", "critic"}
    learner.load_optimizer_state(state)
