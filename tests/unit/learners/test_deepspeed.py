"""learner=deepspeed: the generated DeepSpeed config, and 2-rank ZeRO-2 / ZeRO-3 on CPU (DeepSpeed's CPU
accelerator, gloo) checked against TorchLearner on the same batch, plus a save -> load round trip."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest
import torch
from omegaconf import OmegaConf

from calmrl.data import Step, Trajectory, build_batch
from calmrl.learners.torch import TorchLearner, token_logprobs

deepspeed = pytest.importorskip("deepspeed", reason="learner=deepspeed needs the `deepspeed` extra")

from calmrl.learners.deepspeed import deepspeed_config  # noqa: E402

# One step of DeepSpeed and of TorchLearner on the same batch agree to float rounding: the ranks sum their
# micro-batch gradients in a different order than one process does. 1e-5 on loss and weights is far above that
# noise and far below one step's size (lr = 1e-2 per element).
TOL = 1e-5
# ...except where Adam amplifies it. Adam's first step moves a weight by lr * g / (|g| + eps), whose slope in g is
# lr * eps / (|g| + eps)^2: up to lr / eps = 1e6 where |g| is near eps (seen: a k_proj.bias element with |g| = 0.5
# eps, its per-row terms cancelling). A reordered float32 sum of per-row gradients of size <= 1e-2 is off by at
# most ~1e-9 (GRAD_ROUNDING), so each weight gets TOL plus that bound through Adam's slope: negligible (< 1e-13) for
# |g| >= 1e-6, at most 1e-3 (a tenth of one step) for g = 0. A wrong update still fails: it is off by a whole step.
GRAD_ROUNDING = 1e-9
ADAM_EPS = 1e-8  # torch.optim.AdamW's default, which both learners use


def learner_cfg(**kw):
    base = {
        "name": "deepspeed",
        "micro_batch_size": 2,
        "max_grad_norm": 1.0,
        "weight_decay": 0.01,
        "zero_stage": 2,
        "dtype": "float32",
        "gradient_checkpointing": False,
        "offload_optimizer": False,
        "offload_params": False,
        "bucket_size": 5_000_000,
    }
    return OmegaConf.create({**base, **kw})


ALGO = {"lr": 1e-2, "loss": "ppo_clip", "clip_ratio": 0.2, "kl_coef": 0.0, "ppo_epochs": 1, "minibatch_size": 64}


# ---------------------------------------------------------------- the config dict
def test_config_zero2_fp32():
    c = deepspeed_config(learner_cfg(micro_batch_size=4), world_size=2)
    assert c["zero_optimization"]["stage"] == 2
    assert c["train_batch_size"] == 8 and c["train_micro_batch_size_per_gpu"] == 4
    assert c["managed_gradient_accumulation"] is False
    assert c["bf16"]["enabled"] is False and c["gradient_clipping"] == 1.0
    assert "offload_optimizer" not in c["zero_optimization"]


def test_config_zero3_bf16_offload():
    c = deepspeed_config(
        learner_cfg(zero_stage=3, dtype="bfloat16", offload_optimizer=True, offload_params=True), world_size=4
    )
    z = c["zero_optimization"]
    assert z["stage"] == 3 and z["stage3_gather_16bit_weights_on_model_save"] is True
    assert z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert c["bf16"] == {"enabled": True, "check_grad_overflow": True}


def test_config_refuses_param_offload_below_zero3():
    with pytest.raises(ValueError, match="zero_stage=3"):
        deepspeed_config(learner_cfg(zero_stage=2, offload_params=True), world_size=2)


# ---------------------------------------------------------------- 2 ranks on CPU against TorchLearner
def make_batch(model, tok, words, advantages):
    prompt = tok("task : reach the goal . action :", add_special_tokens=False)["input_ids"]
    trajs = []
    for i, word in enumerate(words):
        rid = tok(" " + word, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt[: 3 + i] + rid])  # prompts of different lengths: padding in every micro-batch
        with torch.no_grad():
            lp = token_logprobs(model, ids, torch.ones_like(ids))[0, 3 + i :].tolist()
        trajs.append(Trajectory(uid=0, seed=0, task="t", steps=[Step(prompt[: 3 + i], rid, lp, word, word, 0.0, "s")]))
    batch = build_batch(trajs, tok.pad_token_id)
    batch.advantages = batch.response_mask * torch.tensor(advantages).unsqueeze(1)
    return batch


def _rank(rank, world, port, policy_dir, stage, batch, out_dir):
    """One learner rank (a spawned process): one update, export, then save -> update -> load -> update."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    torch.set_num_threads(1)
    from calmrl.learners.deepspeed import DeepSpeedLearner, init_distributed
    from calmrl.policy import load_policy

    init_distributed(rank, world, "127.0.0.1", port)
    model, _ = load_policy(policy_dir)
    learner = DeepSpeedLearner(model, OmegaConf.create(ALGO), learner_cfg(zero_stage=stage))
    order = [torch.arange(len(batch))]
    metrics = learner.update(batch, orders=order)
    first = learner.full_state_dict()
    learner.save_state(os.path.join(out_dir, "ds"))
    learner.update(batch, orders=order)
    second = learner.full_state_dict()
    learner.load_state(os.path.join(out_dir, "ds"))
    restored = learner.full_state_dict()
    learner.update(batch, orders=order)
    replayed = learner.full_state_dict()
    learner.save_pretrained(os.path.join(out_dir, "export"))
    if rank == 0:
        torch.save({"first": first, "second": second, "restored": restored, "replayed": replayed}, f"{out_dir}/w.pt")
        with open(f"{out_dir}/metrics.json", "w") as f:
            json.dump(metrics, f)
    else:
        assert first is None  # only rank 0 holds the gathered weights
    _exit_rank()


def first_adam_step_tolerance(model, optimizer) -> dict[str, torch.Tensor]:
    """Per-element tolerance on the weights after one AdamW step (see GRAD_ROUNDING). The step's gradient (after
    clipping) is read back from the optimizer: after one step, exp_avg = (1 - beta1) * g."""
    beta1 = optimizer.param_groups[0]["betas"][0]
    lr = optimizer.param_groups[0]["lr"]
    tol = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        state = optimizer.state.get(param)
        if not state:  # no gradient, so AdamW left it alone
            tol[name] = torch.full_like(param, TOL)
            continue
        g = state["exp_avg"].abs() / (1 - beta1)
        tol[name] = TOL + lr * ADAM_EPS * GRAD_ROUNDING / (g + ADAM_EPS) ** 2
    return tol


def _exit_rank() -> None:
    """End a spawned rank once its results are on disk. The interpreter's own exit can abort in a C++ destructor
    (DeepSpeed's CPU shared-memory comm threads: "terminate called without an active exception", about one run in
    five on 2 cores), which would fail a test whose numbers were all checked; os._exit skips those destructors."""
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_match_torch_learner_and_round_trip(tiny_policy_dir, tmp_path, stage):
    from transformers import AutoModelForCausalLM

    from calmrl.policy import load_policy

    model, tok = load_policy(tiny_policy_dir)
    # 5 rows over 2 ranks x micro-batches of 2: rank 0 runs 2+1 rows, rank 1 runs 2 and one zero-weight pass
    batch = make_batch(model, tok, ["north", "south", "east", "west", "north"], [1.0, -1.0, 0.5, -0.3, 0.2])
    torch.multiprocessing.spawn(
        _rank, args=(2, free_port(), str(tiny_policy_dir), stage, batch, str(tmp_path)), nprocs=2, join=True
    )
    w = torch.load(tmp_path / "w.pt", weights_only=True)
    ds_metrics = json.loads((tmp_path / "metrics.json").read_text())

    ref_learner = TorchLearner(model, OmegaConf.create(ALGO), learner_cfg())
    ref_metrics = ref_learner.update(batch, generator=None)
    ref = model.state_dict()
    tol = first_adam_step_tolerance(model, ref_learner.optimizer)
    for key in ("loss/policy", "loss/neg_logprob", "loss/grad_norm", "loss/clip_frac"):
        assert ds_metrics[key] == pytest.approx(ref_metrics[key], abs=TOL), key
    assert ds_metrics["loss/optimizer_steps"] == 1 and ds_metrics["loss/skipped_steps"] == 0
    moved = 0.0
    for name, tensor in w["first"].items():
        off = (tensor - ref[name]).abs()
        assert bool((off <= tol.get(name, TOL)).all()), f"{name}: off by {float(off.max()):.3g}, beyond rounding"
        moved = max(moved, float((w["first"][name] - w["second"][name]).abs().max()))
    assert moved > 1e-3  # the second update really changed the weights, so the round trip below is not vacuous
    for name in w["first"]:
        assert torch.equal(w["restored"][name], w["first"][name]), name  # load_state brings back step 1 exactly
        # the same second update from the restored weights *and optimizer moments* lands on the same weights
        torch.testing.assert_close(w["replayed"][name], w["second"][name], atol=1e-7, rtol=0, msg=name)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export", use_safetensors=True).state_dict()
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, w["replayed"][name], atol=0, rtol=0, msg=name)


# ---------------------------------------------------------------- the critic (algo=ppo, ma_ppo) on 2 ZeRO-3 ranks
CRITIC_ALGO = {**ALGO, "critic_lr": 1e-2, "value_clip": 0.2}


def with_value_targets(batch, values, returns):
    batch.values = batch.response_mask * torch.tensor(values).unsqueeze(1)
    batch.returns = batch.response_mask * torch.tensor(returns).unsqueeze(1)
    return batch


def _critic_rank(rank, world, port, policy_dir, batch, out_dir):
    """One learner rank with a critic and a reference: the no-grad passes, one update (policy + critic), the
    gathered critic, and save -> update -> load of both engines."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    torch.set_num_threads(1)
    from calmrl.learners.critic import ValueModel
    from calmrl.learners.deepspeed import DeepSpeedLearner, init_distributed
    from calmrl.policy import load_policy

    init_distributed(rank, world, "127.0.0.1", port)
    model, _ = load_policy(policy_dir)
    ref, _ = load_policy(policy_dir)
    critic = ValueModel.from_pretrained(policy_dir)
    algo, cfg = OmegaConf.create(CRITIC_ALGO), learner_cfg(zero_stage=3)
    learner = DeepSpeedLearner(model, algo, cfg, ref_model=ref, critic=critic)
    # the no-grad passes: each rank its share of the rows (3 and 2 here), gathered on every rank
    passes = {"values": learner.critic_values(batch), "current": learner.current_logprobs(batch)}
    passes["reference"] = learner.reference_logprobs(batch)
    order = [torch.arange(len(batch))]
    metrics = learner.update(batch, orders=order)
    first = learner.critic_state_dict()
    learner.save_state(os.path.join(out_dir, "ds"))
    warmup = learner.update(batch, train_policy=False, orders=order)  # critic warm-up: the critic alone
    warmed = learner.critic_state_dict()
    learner.load_state(os.path.join(out_dir, "ds"))
    restored = learner.critic_state_dict()
    if rank == 0:
        torch.save({**passes, "first": first, "warmed": warmed, "restored": restored}, f"{out_dir}/critic.pt")
        with open(f"{out_dir}/metrics.json", "w") as f:
            json.dump({"update": metrics, "warmup": warmup}, f)
    else:
        assert first is None
    _exit_rank()


def test_two_zero3_ranks_score_shards_and_train_the_critic_as_torch_learner_does(tiny_policy_dir, tmp_path):
    from calmrl.learners.critic import ValueModel
    from calmrl.policy import load_policy

    model, tok = load_policy(tiny_policy_dir)
    batch = make_batch(model, tok, ["north", "south", "east", "west", "north"], [1.0, -1.0, 0.5, -0.3, 0.2])
    batch = with_value_targets(batch, [0.1, -0.2, 0.0, 0.3, 0.05], [1.0, -0.5, 0.4, 0.2, -1.0])
    torch.multiprocessing.spawn(
        _critic_rank, args=(2, free_port(), str(tiny_policy_dir), batch, str(tmp_path)), nprocs=2, join=True
    )
    got = torch.load(tmp_path / "critic.pt", weights_only=True)
    ds = json.loads((tmp_path / "metrics.json").read_text())

    critic = ValueModel.from_pretrained(tiny_policy_dir)
    ref_model, _ = load_policy(tiny_policy_dir)
    ref_learner = TorchLearner(model, OmegaConf.create(CRITIC_ALGO), learner_cfg(), ref_model=ref_model, critic=critic)
    torch.testing.assert_close(got["values"], ref_learner.critic_values(batch), atol=TOL, rtol=0)
    torch.testing.assert_close(got["current"], ref_learner.current_logprobs(batch), atol=TOL, rtol=0)
    torch.testing.assert_close(got["reference"], ref_learner.reference_logprobs(batch), atol=TOL, rtol=0)
    assert bool((got["current"][batch.response_mask.bool()] < 0).all())  # every response token has its log-prob
    ref = ref_learner.update(batch, generator=None)
    for key in ("loss/policy", "loss/grad_norm", "critic/value_loss", "critic/grad_norm"):
        assert ds["update"][key] == pytest.approx(ref[key], abs=TOL), key
    assert ds["update"]["loss/optimizer_steps"] == 1 and ds["update"]["loss/skipped_steps"] == 0
    assert ds["warmup"]["loss/optimizer_steps"] == 0 and "critic/value_loss" in ds["warmup"]
    assert "loss/policy" not in ds["warmup"]
    tol = first_adam_step_tolerance(critic, ref_learner.critic_optimizer)
    initial = ValueModel.from_pretrained(tiny_policy_dir).state_dict()
    for name, tensor in critic.state_dict().items():
        off = (got["first"][name] - tensor).abs()
        assert bool((off <= tol.get(name, TOL)).all()), f"{name}: off by {float(off.max()):.3g}, beyond rounding"
        assert torch.equal(got["restored"][name], got["first"][name]), name  # load_state restores the critic too
    # not vacuous: the update moved the critic off its start, and the warm-up moved it again before the restore
    assert (got["first"]["head.weight"] - initial["head.weight"]).abs().max() > 1e-3
    assert (got["warmed"]["head.weight"] - got["first"]["head.weight"]).abs().max() > 1e-3
