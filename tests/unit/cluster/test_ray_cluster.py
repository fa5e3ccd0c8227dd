"""cluster=ray on a local Ray cluster (CPU): placement bundles, weight sync learner -> rollout workers (object
store and disk), a killed rollout worker being restarted with the iteration retried exactly, and a killed state
worker ending the run."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from calmrl.cli import CONFIG_DIR
from calmrl.cluster.ray import bundles

FAST = [
    "policy.hidden_size=32",
    "policy.intermediate_size=64",
    "policy.num_layers=1",
    "policy.num_heads=2",
    "policy.num_kv_heads=1",
    "rollout.num_groups=2",
    "rollout.group_size=4",
    "env.eval_episodes=2",
    "env.max_steps=3",
]


def make(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["run_name=t", "cluster=ray", "learner=deepspeed", *FAST, *overrides])


# ---------------------------------------------------------------- placement (no Ray needed)
def test_split_gives_every_actor_its_own_bundle():
    c = OmegaConf.create(
        {"num_learners": 2, "num_rollout_workers": 3, "placement": "split", "learner_cpus": 2, "learner_gpus": 1,
         "rollout_cpus": 1, "rollout_gpus": 0, "reward_cpus": 2, "reward_gpus": 0.5, "state_cpus": 3, "state_gpus": 1}
    )  # fmt: skip
    spec, learners, workers = bundles(c)
    assert spec == [{"CPU": 2.0, "GPU": 1.0}] * 2 + [{"CPU": 1.0}] * 3 + [{"CPU": 2.0, "GPU": 0.5}]  # reward last
    assert bundles(c, with_rollout=False)[0] == [{"CPU": 2.0, "GPU": 1.0}] * 2  # dpo: the learner ranks only
    assert bundles(c, with_reward=False)[0] == spec[:-1]  # shaper=none: no reward worker
    assert learners == [0, 1] and workers == [2, 3, 4]
    # algo=archer: its critic's state worker after the reward worker, with or without one
    assert bundles(c, with_state=True)[0] == [*spec, {"CPU": 3.0, "GPU": 1.0}]
    assert bundles(c, with_reward=False, with_state=True)[0] == [*spec[:-1], {"CPU": 3.0, "GPU": 1.0}]
    assert bundles(c, with_rollout=False, with_state=True)[0] == spec[:2]


def test_colocate_puts_worker_j_with_learner_j_mod_n_and_sums_resources():
    c = OmegaConf.create(
        {"num_learners": 2, "num_rollout_workers": 3, "placement": "colocate", "learner_cpus": 1, "learner_gpus": 0.5,
         "rollout_cpus": 1, "rollout_gpus": 0.25, "reward_cpus": 1, "reward_gpus": 0, "state_cpus": 1,
         "state_gpus": 0.25}
    )  # fmt: skip
    spec, learners, workers = bundles(c)
    assert workers == [0, 1, 0] and learners == [0, 1]
    assert spec == [{"CPU": 3.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 0.75}, {"CPU": 1.0}]  # the reward worker's last
    assert bundles(c, with_reward=False)[0] == spec[:-1]
    assert bundles(c, with_state=True)[0] == [*spec, {"CPU": 1.0, "GPU": 0.25}]  # never colocated with a learner


def test_config_pairs_deepspeed_with_ray_and_refuses_what_it_cannot_run(tmp_path):
    from calmrl.config import validate
    from calmrl.errors import ConfigError

    validate(make())
    validate(make("cluster=local"))  # learner=deepspeed as one rank in the trainer's process
    with pytest.raises(ConfigError, match="cluster=ray runs its learner ranks as DeepSpeed ranks"):
        validate(make("learner=torch"))
    validate(make("algo=ppo"))  # the ranks train the critic too
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    validate(make("algo=dpo", f"data={tmp_path / 'pairs.jsonl'}"))  # the ranks train the pair losses
    with pytest.raises(ConfigError, match="ZeRO-3 has no other rank"):
        validate(make("cluster=local", "learner.zero_stage=3"))
    with pytest.raises(ConfigError, match="offload_params needs learner.zero_stage=3"):
        validate(make("learner.offload_params=true"))


# ---------------------------------------------------------------- on a local Ray cluster
ray = pytest.importorskip("ray", reason="cluster=ray needs the `ray` extra")
pytest.importorskip("deepspeed", reason="cluster=ray runs learner=deepspeed (the `deepspeed` extra)")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=5, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_the_preference_driver_holds_no_model_and_starts_no_rollout_worker(local_ray, tmp_path):
    """algo=dpo under Ray: the ranks score the reference and train the pair losses; the driver keeps the tokenizer.
    (Before the module's RL trainer takes the local cluster's CPUs.)"""
    from calmrl.loops import build_trainer

    rows = [{"prompt": f"goal {d}", "chosen": f" {d}", "rejected": " west"} for d in ("north", "south", "east")] * 3
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = build_trainer(make("algo=dpo", f"data={tmp_path / 'pairs.jsonl'}"), tmp_path / "run")
    try:
        modules = [k for k, v in vars(t).items() if isinstance(v, torch.nn.Module)]
        assert t.model is None and not modules and t.cluster.workers == [], modules
        assert t.train_iteration(1)["loss/optimizer_steps"] == 1
        assert set(t.evaluate()) >= {"eval/reward_margin", "eval/loss_dpo"}
    finally:
        t.cluster.shutdown()


def test_a_dead_state_worker_ends_the_run_with_a_sentence(local_ray, tmp_path):
    """algo=archer keeps its critic on the state worker; when that worker dies, what the critic learned since the
    last checkpoint is gone, so the run stops with an error pointing to resume=auto instead of training on.
    (Before the module's RL trainer takes the local cluster's CPUs.)"""
    from calmrl.loops import build_trainer

    t = build_trainer(make("algo=archer", "cluster.num_learners=1", "algo.critic_warmup_iters=0"), tmp_path / "run")
    try:
        assert t.train_iteration(1)["loss/optimizer_steps"] >= 1
        ray.kill(t.cluster.state_worker, no_restart=True)
        with pytest.raises(
            RuntimeError, match=r"the state worker \(algo=archer's state across iterations\) died.*resume=auto"
        ):
            t.train_iteration(2)
    finally:
        t.cluster.shutdown()


@pytest.fixture(scope="module")
def trainer(local_ray, tmp_path_factory):
    """A RayTrainer (2 ZeRO-3 ranks, 2 rollout workers, CALM's oracle judge on the reward worker) that has run one
    iteration."""
    from calmrl.loops import build_trainer

    cfg = make("learner.zero_stage=3", "cluster.num_rollout_workers=2", "shaper=calm")
    t = build_trainer(cfg, tmp_path_factory.mktemp("run"))
    t.first = t.train_iteration(1)
    yield t
    t.cluster.shutdown()


def fixed_sequences(trainer):
    enc = trainer.tokenizer(
        ["task : reach the goal . action : north", "goal 2 north . action : west"], return_tensors="pt", padding=True
    )
    return enc["input_ids"], enc["attention_mask"]


def assert_workers_match_learner(trainer):
    ids, attn = fixed_sequences(trainer)
    learner, workers = trainer.cluster.logprobs(ids, attn)
    for w in workers:
        torch.testing.assert_close(w, learner, atol=1e-6, rtol=0)
    return learner


def test_the_driver_holds_no_model(trainer):
    """Policy, reference and critic live on the ranks, generation on the workers: the driver keeps no module."""
    modules = [k for k, v in vars(trainer).items() if isinstance(v, torch.nn.Module)]
    assert trainer.model is None and trainer.engine is None and not modules, modules


def test_update_then_sync_workers_have_the_learners_weights(trainer):
    m = trainer.first
    assert m["loss/optimizer_steps"] == 1 and m["perf/weight_sync_s"] > 0
    ids, attn = fixed_sequences(trainer)
    before = trainer.cluster.logprobs(ids, attn)[0]
    batch = _batch_with_advantages(trainer, ids, attn)
    trainer.cluster.update(batch, True, [torch.arange(len(batch))])
    after_update, stale = trainer.cluster.logprobs(ids, attn)
    assert (after_update - before).abs().max() > 1e-4  # the update moved the learner ...
    assert (stale[0] - after_update).abs().max() > 1e-4  # ... and the workers lag until the sync
    trainer.learner.cluster.sync_weights()
    assert_workers_match_learner(trainer)


def test_disk_fallback_syncs_the_same_weights(trainer):
    ids, attn = fixed_sequences(trainer)
    batch = _batch_with_advantages(trainer, ids, attn)
    trainer.cluster.update(batch, True, [torch.arange(len(batch))])
    trainer.cluster.c.weight_sync = "disk"
    try:
        trainer.cluster.sync_weights()
    finally:
        trainer.cluster.c.weight_sync = "object_store"
    assert (trainer.run_dir / "weight_sync" / "policy.safetensors").is_file()
    assert_workers_match_learner(trainer)


def test_killed_worker_is_restarted_and_the_rollout_retried_exactly(trainer):
    cluster = trainer.cluster
    timings = {"generate": 0.0, "env": 0.0}
    state = torch.get_rng_state()
    expected = trainer.rollout(2, timings)
    torch.set_rng_state(state)
    ray.kill(cluster.workers[1], no_restart=True)  # worker 1 dies between iterations
    restarts = cluster.restarts
    again = trainer.rollout(2, timings)
    assert cluster.restarts == restarts + 1
    # same weights (the restarted worker loaded the last sync), same seeds, same RNG: the same episodes
    assert [[s.response_ids for s in t.steps] for t in again] == [[s.response_ids for s in t.steps] for t in expected]
    assert [t.episode_return for t in again] == [t.episode_return for t in expected]
    assert_workers_match_learner(trainer)
    # and the trainer's loop goes on, counting the restart in the iteration's metrics
    ray.kill(cluster.workers[0], no_restart=True)
    m = trainer.train_iteration(3)
    assert m["cluster/worker_restarts"] == 1 and m["loss/optimizer_steps"] == 1


def test_killed_reward_worker_is_restarted_and_the_shaping_retried(trainer):
    """A killed reward worker (the fixture's shaper=calm) is restarted and the iteration goes on."""
    cluster = trainer.cluster
    assert cluster.reward is not None
    ray.kill(cluster.reward, no_restart=True)
    m = trainer.train_iteration(4)
    assert m["cluster/worker_restarts"] == 1 and m["loss/optimizer_steps"] == 1


def test_restart_budget_is_enforced(trainer):
    cluster = trainer.cluster
    cluster.c.max_worker_restarts = cluster.restarts  # no restart left
    ray.kill(cluster.workers[0], no_restart=True)
    with pytest.raises(RuntimeError, match="max_worker_restarts"):
        trainer.rollout(5, {"generate": 0.0, "env": 0.0})


def _batch_with_advantages(trainer, ids, attn):
    from calmrl.data import Batch

    n, width = ids.shape
    mask = attn.float().clone()
    mask[:, : width - 2] = 0  # the last two tokens are the "response"
    zeros = torch.zeros(n)
    batch = Batch(
        input_ids=ids,
        attention_mask=attn,
        response_mask=mask,
        old_logprobs=torch.zeros(n, width),
        rewards=zeros,
        uid=torch.zeros(n, dtype=torch.long),
        traj=torch.arange(n),
        step=torch.zeros(n, dtype=torch.long),
        anchor=torch.zeros(n, dtype=torch.long),
        invalid=torch.zeros(n, dtype=torch.bool),
        episode_return=zeros,
        anchor_text=["a"] * n,
    )
    batch.advantages = mask * torch.tensor([1.0, -1.0]).unsqueeze(1)
    return batch
