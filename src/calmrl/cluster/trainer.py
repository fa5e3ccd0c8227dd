"""`RayTrainer`: the trainer's loop, unchanged, with its policy, reference, critic and rollout roles hosted by a
`RayCluster`; `RayPreferenceTrainer`: the preference loop, unchanged, with its pair losses on the learner ranks.

The driver holds no copy of the policy: it keeps the tokenizer, template, the algo, and the evaluation envs.
A method's state across iterations stays with it too, unless the state holds a model (ArCHer's critic), which
lives on the state worker. The shaper, with any model it loads, runs on the reward worker (the identity,
`shaper=none`, on the driver). The rollout workers play the training episodes (with the method's episode
program) and generate for the driver's evaluation and for an algo state's sampling between rollouts; the learner
ranks compute reference log-probs, critic values and the learner's own log-probs on their shares of the batch,
train, and write the checkpoint's `policy/` (rank 0: the full gathered weights, safetensors). The checkpoint also
carries DeepSpeed's own sharded state under `deepspeed/`, moved in before the manifest is written, so
`resume=auto` restores the optimizer partitions as atomically as everything else (same `num_learners` and
`zero_stage` required).

RNG: the driver's torch RNG is the run's single sampling stream, as in cluster=local: rollout worker 0 (and the
reward worker, for a shaper that samples) draws from it and hands it back, and the minibatch orders are drawn
from it on the driver; so with one rollout worker the first iteration samples exactly the trajectories
cluster=local samples.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from calmrl.cluster.ray import RayCluster
from calmrl.envs.pool import InlinePool
from calmrl.learners.checkpoint import LearnerStateCheckpoints
from calmrl.policy import load_tokenizer
from calmrl.preference import PreferenceTrainer
from calmrl.trainer import Trainer


class RayLearner:
    """The trainer's view of the learner ranks: TorchLearner's interface, backed by the cluster."""

    def __init__(self, cluster: RayCluster, algo_cfg):
        self.cluster, self.algo = cluster, algo_cfg

    def update(self, batch, train_policy: bool = True) -> dict[str, float]:
        # the same draws, from the same stream, as TorchLearner.update makes
        orders = [torch.randperm(len(batch)) for _ in range(self.algo.ppo_epochs)]
        metrics = self.cluster.update(batch, train_policy, orders)
        return {**metrics, **self.cluster.sync_weights()}

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


class RemoteShaper:
    """The trainer's view of the reward worker: a shaper (`shaper(batch, trajectories) -> batch`, `metrics()`)."""

    def __init__(self, cluster: RayCluster):
        self.cluster, self.last_metrics = cluster, {}

    def __call__(self, batch, trajectories):
        batch, self.last_metrics = self.cluster.shape(batch, trajectories)
        return batch

    def metrics(self) -> dict[str, float]:
        return self.last_metrics


class RemoteAlgoState:
    """The trainer's view of an algo state on the state worker: `calmrl.trainer.LocalAlgoState`'s interface. The
    state's questions to the policy (`begin`) are answered here, on the driver's sampling stream, between its two
    halves."""

    def __init__(self, cluster: RayCluster, saved):
        self.cluster, self.last_advantages = cluster, None
        cluster.build_state(saved)

    def observe(self, trajectories, batch, it: int, sample) -> dict[str, float]:
        queries = self.cluster.state_begin(trajectories, batch, it)
        metrics, self.last_advantages = self.cluster.state_end([sample(prompts) for prompts in queries])
        return metrics

    def advantages(self, batch) -> torch.Tensor:
        if self.last_advantages is None or self.last_advantages.shape != batch.response_mask.shape:
            raise RuntimeError("the state worker's advantages are not this batch's: observe it first")
        return self.last_advantages

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.cluster.state_dict()


class RayTrainer(Trainer):
    def __init__(self, cfg, run_dir: Path):
        super().__init__(cfg, run_dir)
        # the episodes run in the workers' own pools
        self.train_envs.close()
        self.train_envs = InlinePool([])
        self.policy_weights = self.cluster  # the checkpoint's policy/ is written by learner rank 0

    def load_policy_copy(self, path: Path):
        return None, load_tokenizer(path, self.cfg.policy.trust_remote_code)  # the workers and ranks load it

    def build_learner(self, base_path: Path) -> RayLearner:
        """Start the cluster: learner ranks (with their reference and critic), rollout workers, the reward worker."""
        return start_cluster(self, base_path, with_rollout=True)

    def build_reward(self, base_path: Path):
        if self.cluster.reward is None:  # the identity shaper (shaper=none): nothing to host, it stays here
            return super().build_reward(base_path)
        return RemoteShaper(self.cluster)  # the shaper and its models live on the reward worker

    def build_algo_state(self, base_path: Path):
        if not self.method.state.holds_model:  # a table (MA-PPO's): kept here, next to the advantages
            return super().build_algo_state(base_path)
        return RemoteAlgoState(self.cluster, self.saved_algo_state())

    def build_generators(self, load_path: Path):
        # generation outside the episodes (evaluation, an algo state's sampling) goes to the rollout workers too
        return None, self.cluster.generate, partial(self.cluster.generate, greedy=True)

    def rollout(self, it: int, timings: dict[str, float]):
        """The workers play the episodes, each with the method's episode program (RolloutWorker.rollout)."""
        seeds, uids = self.episode_seeds(it)
        return self.cluster.rollout(seeds, uids, it, timings)

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


def start_cluster(loop, base_path: Path, with_rollout: bool) -> RayLearner:
    """Start `loop.cluster` (the learner ranks, resuming from the checkpoint's `deepspeed/` state, and with
    `with_rollout` the rollout workers) and point `loop.checkpoints` and `loop.policy_weights` at it: every rank
    writes its shard of DeepSpeed's state, rank 0 the checkpoint's `policy/`."""
    cfg, resume = loop.cfg, loop.resume_from
    state_dir = None
    if resume is not None and (resume.path / LearnerStateCheckpoints.STATE_DIR).is_dir():
        state_dir = resume.path / LearnerStateCheckpoints.STATE_DIR
    policy_path = resume.policy_dir if resume else base_path
    loop.cluster = RayCluster(cfg, loop.run_dir, policy_path, base_path, state_dir, with_rollout=with_rollout)
    loop.checkpoints = LearnerStateCheckpoints(
        loop.checkpoints.directory, cfg.trainer.keep_last, loop.cluster.save_state
    )
    loop.policy_weights = loop.cluster
    return RayLearner(loop.cluster, cfg.algo)


class RayPairRole:
    """The preference loop's view of the learner ranks' PairRoles (calmrl.learners.pairs): the same interface."""

    def __init__(self, cluster: RayCluster, pad_id: int):
        self.cluster, self.pad_id = cluster, pad_id

    def load(self, data) -> None:
        self.cluster.load_pairs(data, self.pad_id)

    def train_step(self, idx: list[int]) -> dict[str, float] | None:
        return self.cluster.pair_step(idx)

    def evaluate(self) -> dict[str, float]:
        return self.cluster.pair_evaluate()


class RayPreferenceTrainer(PreferenceTrainer):
    """algo=dpo / dpo_treg under cluster=ray: the driver holds the data, the tokenizer and the reference cache file;
    the learner ranks score the reference once and train the pair losses, each on its share of every step's pairs."""

    def load_policy_copy(self, path: Path):
        return None, load_tokenizer(path, self.cfg.policy.trust_remote_code)  # the ranks load it

    def build_pair_role(self, base_path: Path):
        learner = start_cluster(self, base_path, with_rollout=False)
        return learner, RayPairRole(self.cluster, self.tokenizer.pad_token_id)

    def reference_cache(self, base_path: Path, data, contrast):
        return self.cluster.pair_reference(data, contrast, self.tokenizer.pad_token_id)

    def run(self) -> dict:
        try:
            return super().run()
        finally:
            self.cluster.shutdown()
