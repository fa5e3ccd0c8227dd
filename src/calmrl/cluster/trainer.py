"""`RayTrainer`: the trainer's loop, unchanged, with rollouts and updates sent to a `RayCluster`.

The driver keeps what cluster=local keeps (tokenizer, template, shaper, the algo and its state across iterations,
the evaluation envs and one copy of the policy); the workers play the episodes with the method's episode program
and answer the algo state's sampling between rollouts. The driver's copy receives every weight sync, so evaluation and the checkpoint's `policy/`
(safetensors, the full gathered weights) are exactly the learners'. The checkpoint also carries DeepSpeed's own
sharded state under `deepspeed/`, moved in before the manifest is written, so `resume=auto` restores the
optimizer partitions as atomically as everything else (same `num_learners` and `zero_stage` required).

RNG: the driver's torch RNG is the run's single sampling stream, as in cluster=local: rollout worker 0 draws
from it and hands it back, and the minibatch orders are drawn from it on the driver; so with one rollout
worker the first iteration samples exactly the trajectories cluster=local samples.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from calmrl.cluster.ray import RayCluster
from calmrl.envs.pool import InlinePool
from calmrl.learners.checkpoint import LearnerStateCheckpoints
from calmrl.runs import train_seeds
from calmrl.trainer import Trainer


class RayLearner:
    """The trainer's view of the learner ranks: TorchLearner's interface, backed by the cluster."""

    def __init__(self, cluster: RayCluster, algo_cfg, driver_model):
        self.cluster, self.algo, self.driver_model = cluster, algo_cfg, driver_model

    def update(self, batch, train_policy: bool = True) -> dict[str, float]:
        # the same draws, from the same stream, as TorchLearner.update makes
        orders = [torch.randperm(len(batch)) for _ in range(self.algo.ppo_epochs)]
        metrics = self.cluster.update(batch, train_policy, orders)
        return {**metrics, **self.cluster.sync_weights(self.driver_model)}

    def reference_logprobs(self, batch) -> torch.Tensor:
        return self.cluster.reference_logprobs(batch)

    def current_logprobs(self, batch) -> torch.Tensor:
        return self.cluster.current_logprobs(batch)

    def critic_values(self, batch) -> torch.Tensor:
        return self.cluster.critic_values(batch)

    def critic_state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.cluster.critic_state_dict()

    def optimizer_state(self) -> None:
        return None  # DeepSpeed's partitions go into the checkpoint's deepspeed/ (LearnerStateCheckpoints)

    def load_optimizer_state(self, state) -> None:
        raise NotImplementedError("cluster=ray restores the optimizer from the checkpoint's deepspeed/ directory")


class RayTrainer(Trainer):
    def __init__(self, cfg, run_dir: Path):
        super().__init__(cfg, run_dir)
        # the episodes run in the workers' own pools
        self.train_envs.close()
        self.train_envs = InlinePool([])
        state_dir = None
        if self.resume_from is not None and (self.resume_from.path / "deepspeed").is_dir():
            state_dir = self.resume_from.path / "deepspeed"
        policy_path = self.resume_from.policy_dir if self.resume_from else self._policy_path()
        t0 = time.perf_counter()
        self.cluster = RayCluster(cfg, self.run_dir, policy_path, self._policy_path(), state_dir)
        self.setup_s = time.perf_counter() - t0
        self.learner = RayLearner(self.cluster, cfg.algo, self.model)
        # sampling between rollouts (an algo state's `sample`, ArCHer's V targets) goes to the rollout role too
        self.sample = self.cluster.sample
        self.checkpoints = LearnerStateCheckpoints(
            self.checkpoints.directory, cfg.trainer.keep_last, self.cluster.save_state
        )

    def build_learner(self, base_path: Path):
        # the learner ranks are Ray actors (with their reference and critic), started in __init__
        return None

    def rollout(self, it: int, timings: dict[str, float]):
        """The workers play the episodes, each with the method's episode program (RolloutWorker.rollout)."""
        cfg = self.cfg
        seeds = train_seeds(cfg.seed, it, cfg.rollout.num_groups, cfg.env.eval_seed_offset)
        g = cfg.rollout.group_size
        return self.cluster.rollout(
            [s for s in seeds for _ in range(g)], [u for u in range(len(seeds)) for _ in range(g)], it, timings
        )

    def train_iteration(self, it: int) -> dict[str, float]:
        restarts = self.cluster.restarts
        metrics = super().train_iteration(it)
        metrics["cluster/worker_restarts"] = float(self.cluster.restarts - restarts)
        return metrics

    def run(self) -> dict:
        try:
            return super().run()
        finally:
            self.cluster.shutdown()
