"""`cluster=ray`: a placement group of DeepSpeed learner actors and rollout worker actors, and the calls the
trainer makes on them (rollout, update, weight sync, checkpoint state).

Placement (conf/cluster/ray.yaml): one placement group, one bundle per learner rank ({CPU: learner_cpus,
GPU: learner_gpus}); with `placement=split` one more bundle per rollout worker ({CPU: rollout_cpus, GPU:
rollout_gpus}); with `placement=colocate` rollout worker j joins learner (j mod N)'s bundle, which grows by the
worker's resources (give fractional GPUs to share one). `strategy` is the placement group's (PACK: as few nodes
as possible; SPREAD: across nodes). Without `cluster.address` a local Ray cluster starts in this process.

Weight sync after every update: learner rank 0 gathers the full weights (all ranks take part under ZeRO-3) and
puts them in Ray's object store once; every worker reads them from there (zero-copy on its node). With
`weight_sync=disk` rank 0 writes `<run dir>/weight_sync/policy.safetensors` instead and workers read the file.

Rollout-worker failure: a rollout call that finds a worker dead (killed, OOM, node lost) starts a new worker in
the dead one's bundle, loads the latest synced weights into it, and retries the whole rollout with the same RNG
state, so the retried iteration is the one the run would have had (up to `max_worker_restarts` times per run,
then the run stops with the error; `resume=auto` continues it from the last checkpoint). The reward worker
(the shaper, with any model it loads; its own bundle, the placement group's last; none for `shaper=none`, which
the driver applies) is restarted and its call retried the same way. A learner failure ends the run the same
way: the DeepSpeed world cannot lose a rank mid-step. So does a state worker's (an algo state that holds a model,
ArCHer's critic and replay buffer; its own bundle, after the reward worker's): what it learned since the last
checkpoint is lost with it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from calmrl.algos import ALGOS
from calmrl.cluster.actors import LearnerActor, RewardWorker, RolloutWorker, StateWorker, worker_seed
from calmrl.schemas.shaper import shapes_rewards

log = logging.getLogger(__name__)


def bundles(
    c, with_rollout: bool = True, with_reward: bool = True, with_state: bool = False
) -> tuple[list[dict], list[int], list[int]]:
    """(placement group bundles, bundle index of each learner rank, bundle index of each rollout worker). With
    rollouts, in either placement, the reward worker's bundle (`with_reward`: a shaper that is not the identity)
    and then the state worker's (`with_state`: an algo state that holds a model) come last; `with_rollout=False`:
    learner bundles only (the preference algos train on a data set: no rollout, no shaping, no state)."""

    def res(cpus, gpus):
        return {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}

    n, m = int(c.num_learners), int(c.num_rollout_workers) if with_rollout else 0
    reward = [res(c.reward_cpus, c.reward_gpus)] if with_rollout and with_reward else []
    reward += [res(c.state_cpus, c.state_gpus)] if with_rollout and with_state else []
    if str(c.placement) == "split":
        out = [res(c.learner_cpus, c.learner_gpus)] * n + [res(c.rollout_cpus, c.rollout_gpus)] * m
        return out + reward, list(range(n)), list(range(n, n + m))
    share = [sum(1 for j in range(m) if j % n == i) for i in range(n)]
    out = [res(c.learner_cpus + k * c.rollout_cpus, c.learner_gpus + k * c.rollout_gpus) for k in share]
    return out + reward, list(range(n)), [j % n for j in range(m)]


def start_ray(c, with_rollout: bool = True, with_reward: bool = True, with_state: bool = False) -> None:
    """Connect to `cluster.address`, or start a local cluster big enough for the placement group (its CPUs are
    logical: on a small machine the actors share the cores, which only costs speed); one this process started
    already is kept if the placement fits, else started again."""
    import ray

    spec = bundles(c, with_rollout, with_reward, with_state)[0]
    need = math.ceil(sum(b["CPU"] for b in spec))
    gpus = math.ceil(sum(b.get("GPU", 0.0) for b in spec))
    if ray.is_initialized():
        have = ray.cluster_resources()
        if c.address or (have.get("CPU", 0) >= need and have.get("GPU", 0) >= gpus):
            return
        # the local cluster an earlier job of this multirun started is too small for this job's placement (an
        # algo with a state worker after one without): start it again, bigger, instead of waiting for it
        ray.shutdown()
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True}
    if c.address:
        ray.init(address=c.address, **kwargs)
        return
    # address="local": a new cluster even where `ray start` left one running on this machine (ray.init would
    # join that one, and refuse the num_cpus given here)
    ray.init(
        address="local", num_cpus=max(int(c.num_cpus or os.cpu_count() or 1), need), num_gpus=gpus or None, **kwargs
    )


def placement_summary(
    pg, learner_bundles: list[int], worker_bundles: list[int], reward_bundle: int | None, state_bundle: int | None
) -> str:
    """Where the placement group put each role, by node address: 'learner ranks on 10.0.0.1, 10.0.0.2; rollout
    workers on 10.0.0.2; reward worker on 10.0.0.2' (and the state worker's, if any)."""
    import ray
    from ray.util import placement_group_table

    node_ip = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    bundle_node = placement_group_table(pg)["bundles_to_node_id"]

    def where(bundles: list[int]) -> str:
        return ", ".join(node_ip.get(bundle_node.get(b), "?") for b in bundles)

    out = f"learner ranks on {where(learner_bundles)}"
    if worker_bundles:
        out += f"; rollout workers on {where(worker_bundles)}"
    if reward_bundle is not None:
        out += f"; reward worker on {where([reward_bundle])}"
    if state_bundle is not None:
        out += f"; state worker on {where([state_bundle])}"
    return out


class RayCluster:
    """The learner ranks and (`with_rollout`) the rollout workers of one run, and the calls the trainer makes on
    them."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        policy_path: Path,
        base_path: Path,
        state_dir: Path | None,
        with_rollout: bool = True,
    ):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.cfg, self.c = cfg, cfg.cluster
        self.run_dir = Path(run_dir)
        self.policy_path = str(policy_path)
        self.restarts = 0
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        # the identity shaper runs on the driver: no worker to start, no batch to send and take back; so does an
        # algo state without a model of its own (MA-PPO's parse table)
        with_reward = with_rollout and shapes_rewards(cfg.shaper)
        state_cls = ALGOS.get(cfg.algo.name).state
        with_state = with_rollout and state_cls is not None and state_cls.holds_model
        start_ray(self.c, with_rollout, with_reward, with_state)
        self.timings["ray_init_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        spec, learner_bundles, self.worker_bundles = bundles(self.c, with_rollout, with_reward, with_state)
        self.pg = placement_group(spec, strategy=str(self.c.strategy))
        try:
            ray.get(self.pg.ready(), timeout=float(self.c.placement_timeout_s))
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"Ray could not place {spec} within cluster.placement_timeout_s={self.c.placement_timeout_s}s "
                f"(cluster resources: {ray.cluster_resources()}); lower cluster.*_cpus / *_gpus or add nodes"
            ) from None
        self.timings["placement_s"] = time.perf_counter() - t0
        self.reward_bundle = len(spec) - 1 - with_state if with_reward else None
        state_bundle = len(spec) - 1 if with_state else None
        log.info(
            "Ray placement: %s",
            placement_summary(self.pg, learner_bundles, self.worker_bundles, self.reward_bundle, state_bundle),
        )
        self._strategy = lambda i: PlacementGroupSchedulingStrategy(
            placement_group=self.pg, placement_group_bundle_index=i
        )

        # the configs the actors need, resolved here where Hydra's interpolations work
        self.actor_cfg = {
            k: OmegaConf.to_container(cfg[k], resolve=True)
            for k in ("algo", "learner", "policy", "env", "rollout", "shaper")
        }
        self.actor_cfg["device"] = str(cfg.device)
        self.actor_cfg["seed"] = int(cfg.seed)
        threads = self.c.num_threads
        # started first and not waited for: its process comes up while the others load; `build_state` builds it
        self.state_worker = None
        if with_state:
            self.state_worker = (
                ray.remote(StateWorker)
                .options(
                    num_cpus=self.c.state_cpus,
                    num_gpus=self.c.state_gpus,
                    scheduling_strategy=self._strategy(state_bundle),
                )
                .remote(self.actor_cfg, str(base_path), str(self.run_dir), threads)
            )
        env_vars = {"DS_ACCELERATOR": "cpu"} if not self.c.learner_gpus else {}
        if threads:
            env_vars["OMP_NUM_THREADS"] = str(threads)

        t0 = time.perf_counter()
        n = int(self.c.num_learners)
        Learner = ray.remote(LearnerActor)
        self.learners = [
            Learner.options(
                num_cpus=self.c.learner_cpus,
                num_gpus=self.c.learner_gpus,
                scheduling_strategy=self._strategy(learner_bundles[r]),
                runtime_env={"env_vars": env_vars},
            ).remote(r, n, threads)
            for r in range(n)
        ]
        master = ray.get(self.learners[0].address.remote())
        ray.get(
            [
                a.setup.remote(
                    master, self.actor_cfg, self.policy_path, str(base_path), str(state_dir) if state_dir else None
                )
                for a in self.learners
            ]
        )
        self.timings["learners_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        total = cfg.rollout.num_groups * cfg.rollout.group_size
        self.envs_per_worker = math.ceil(total / int(self.c.num_rollout_workers))
        self._worker_cls = ray.remote(RolloutWorker)
        self.workers = [self._start_worker(j) for j in range(len(self.worker_bundles))]
        ray.get([w.ping.remote() for w in self.workers])
        self.timings["workers_s"] = time.perf_counter() - t0
        self.weights_source = None  # what a (re)started worker loads on top of policy_path: the latest sync
        self.probe_expected = None  # the learner's log-probs of the vLLM sync probe under weights_source
        self.probe = ray.get(self.workers[0].probe.remote()) if self.workers else None

        t0 = time.perf_counter()
        self.base_path = str(base_path)
        self._reward_cls = ray.remote(RewardWorker)
        self.reward = self._start_reward_worker() if with_reward else None
        if self.reward is not None:
            ray.get(self.reward.ping.remote())
        self.timings["reward_s"] = time.perf_counter() - t0
        log.info("Ray start-up: %s", ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in self.timings.items()))

    def _start_worker(self, j: int):
        return self._worker_cls.options(
            num_cpus=self.c.rollout_cpus,
            num_gpus=self.c.rollout_gpus,
            scheduling_strategy=self._strategy(self.worker_bundles[j]),
        ).remote(j, self.actor_cfg, self.policy_path, self.envs_per_worker, self.c.num_threads)

    def _start_reward_worker(self):
        return self._reward_cls.options(
            num_cpus=self.c.reward_cpus,
            num_gpus=self.c.reward_gpus,
            scheduling_strategy=self._strategy(self.reward_bundle),
        ).remote(self.actor_cfg, self.base_path, str(self.run_dir), self.c.num_threads)

    # ---------------------------------------------------------------- rollout
    def rollout(self, seeds: list[int], uids: list[int], it: int, timings: dict[str, float]):
        """Episodes for (seeds, uids), split into contiguous shares over the workers. Worker 0 samples from the
        driver's torch RNG state (and hands the advanced state back), so with one worker the draws are exactly
        those of `cluster=local`; worker j > 0 samples from `worker_seed(seed, it, j)`."""

        m = len(self.workers)
        size = math.ceil(len(seeds) / m)
        rng = torch.get_rng_state()

        def calls():
            out = []
            for j, w in enumerate(self.workers):
                part = slice(j * size, (j + 1) * size)
                state, seed = (rng, None) if j == 0 else (None, worker_seed(int(self.cfg.seed), it, j))
                out.append(w.rollout.remote(seeds[part], uids[part], state, seed))
            return out

        results = self._get_retrying(calls)
        trajs = [t for r in results for t in r[0]]
        for key in ("generate", "env"):
            timings[key] += max(r[1][key] for r in results)  # the workers run in parallel: the slowest counts
        torch.set_rng_state(results[0][2])
        return trajs

    def generate(self, prompts: list[str], greedy: bool = False) -> list:
        """Generations for `prompts` from rollout worker 0 (`greedy`: at rollout.eval_temperature, for evaluation),
        on the driver's RNG stream (handed over and back, as in `rollout`), so they are the draws the trainer's own
        generator would make under cluster=local."""
        rng = torch.get_rng_state()
        generations, rng = self._get_retrying(lambda: self.workers[0].generate_from.remote(prompts, rng, greedy))
        torch.set_rng_state(rng)
        return generations

    def shape(self, batch, trajectories) -> tuple:
        """(the shaped batch, the shaper's counters) from the reward worker, on the driver's RNG stream (handed
        over and back, as in `rollout`)."""
        rng = torch.get_rng_state()
        shaped, metrics, rng = self._get_retrying(lambda: self.reward.shape.remote(batch, trajectories, rng))
        torch.set_rng_state(rng)
        return shaped, metrics

    # ---------------------------------------------------------------- the state worker (an algo state with a model)
    def build_state(self, saved: dict[str, torch.Tensor] | None) -> None:
        """Build the algo state on the state worker (its initial weights drawn from the driver's RNG stream, handed
        over and back, as the trainer draws them in one process), with a resumed run's `saved` tensors."""
        torch.set_rng_state(self._on_state_worker(lambda w: w.build.remote(torch.get_rng_state(), saved)))

    def state_begin(self, trajectories, batch, it: int) -> list[list[str]]:
        return self._on_state_worker(lambda w: w.begin.remote(trajectories, batch, it))

    def state_end(self, responses: list[list[str]]) -> tuple[dict[str, float], torch.Tensor]:
        return self._on_state_worker(lambda w: w.end.remote(responses))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._on_state_worker(lambda w: w.state_dict.remote())

    def _on_state_worker(self, call):
        """`ray.get(call(state worker))`; a dead state worker ends the run with a sentence saying so (what it
        learned since the last checkpoint died with it: no restart can bring that back)."""
        import ray

        try:
            return ray.get(call(self.state_worker))
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(
                f"the state worker (algo={self.cfg.algo.name}'s state across iterations) died ({type(e).__name__}); "
                "resume=auto continues from the last checkpoint"
            ) from e

    def _get_retrying(self, calls):
        """`ray.get(calls())` on rollout workers or the reward worker; a dead one is restarted and `calls()` made
        again (the retried calls go to the new actors, with the same arguments, so they draw what the lost ones
        would have)."""
        import ray

        while True:
            try:
                return ray.get(calls())
            except ray.exceptions.RayActorError as e:
                self._restart_dead_workers(e)

    def _restart_dead_workers(self, error: Exception) -> None:
        import ray

        def alive(actor) -> bool:
            try:
                ray.get(actor.ping.remote(), timeout=30)
                return True
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                return False

        def count_restart(what: str) -> None:
            self.restarts += 1
            if self.restarts > int(self.c.max_worker_restarts):
                raise RuntimeError(
                    f"{what} died again ({self.restarts} restarts > cluster.max_worker_restarts="
                    f"{self.c.max_worker_restarts}); resume=auto continues from the last checkpoint"
                ) from error
            log.warning("%s died (%s); restarting it and retrying", what, type(error).__name__)

        for j, w in enumerate(self.workers):
            if alive(w):
                continue
            count_restart(f"rollout worker {j}")
            ray.kill(w, no_restart=True)
            self.workers[j] = self._start_worker(j)
            if self.weights_source is not None:
                ray.get(self.workers[j].load_weights.remote(self.weights_source, self.probe_expected))
        if self.reward is not None and not alive(self.reward):
            count_restart("the reward worker")
            ray.kill(self.reward, no_restart=True)
            self.reward = self._start_reward_worker()

    # ---------------------------------------------------------------- learners
    def update(self, batch, train_policy: bool, orders: list[torch.Tensor]) -> dict[str, float]:
        """One update on the learner ranks; the rollout workers' vLLM engines sleep through it (with
        rollout.enable_sleep_mode: colocated, the ranks get their GPU memory) until the next weight sync."""
        import ray

        ray.get([w.sleep.remote() for w in self.workers])
        ref = ray.put(batch)
        return ray.get([a.update.remote(ref, train_policy, orders) for a in self.learners])[0]

    def reference_logprobs(self, batch) -> torch.Tensor:
        return self._per_token(lambda rank, ref: rank.reference_logprobs.remote(ref), batch)

    def current_logprobs(self, batch) -> torch.Tensor:
        return self._per_token(lambda rank, ref: rank.current_logprobs.remote(ref), batch)

    def critic_values(self, batch) -> torch.Tensor:
        return self._per_token(lambda rank, ref: rank.critic_values.remote(ref), batch)

    def _per_token(self, call, batch) -> torch.Tensor:
        """[N, L] from the ranks' no-grad pass over the batch (`call(rank, batch ref)`): each rank computes its
        share of the rows and the shares are all-gathered (rank 0's answer is the whole)."""
        import ray

        ref = ray.put(batch)  # serialized once; the ranks on a node read the one copy
        return ray.get([call(a, ref) for a in self.learners])[0]

    def critic_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The critic's full weights (gathered by rank 0), None without a critic."""
        import ray

        return ray.get([a.critic_state_dict.remote() for a in self.learners])[0]

    def sync_weights(self) -> dict[str, float]:
        """Learner rank 0 -> every rollout worker."""
        import ray

        t0 = time.perf_counter()
        disk = str(self.c.weight_sync) == "disk"
        path = str(self.run_dir / "weight_sync" / "policy.safetensors") if disk else None
        refs = [a.export.remote(path) for a in self.learners]
        ray.get(refs[1:])  # the other ranks' part of the gathers
        source, gather_s = ray.get(refs[0])
        source_ref = source if disk else ray.put(source)
        expected = None
        if self.probe is not None:  # vLLM workers verify each sync against the learner's log-probs of a probe
            ids = torch.tensor([self.probe])
            expected = ray.get([a.logprobs.remote(ids, torch.ones_like(ids)) for a in self.learners])[0][0, 1:]
        t1 = time.perf_counter()
        load_s = ray.get([w.load_weights.remote(source_ref, expected) for w in self.workers])
        t2 = time.perf_counter()
        self.weights_source, self.probe_expected = source_ref, expected
        return {
            "perf/sync_gather_s": gather_s,
            "perf/sync_export_s": t1 - t0,  # gather + pack + transfer to the driver + put
            "perf/sync_workers_s": t2 - t1,
            "perf/sync_worker_load_s": max(load_s),
            "perf/weight_sync_s": t2 - t0,  # learner -> workers: what the next rollout waits for
        }

    # ---------------------------------------------------------------- the preference algos' pair losses (PairRole)
    def pair_reference(self, data, contrast_prompts, pad_id: int):
        """The reference cache of `data` (calmrl.learners.pairs.score_reference), each rank scoring its share."""
        import ray

        return ray.get([a.pair_reference.remote(data, contrast_prompts, pad_id) for a in self.learners])[0]

    def load_pairs(self, data, pad_id: int) -> None:
        """Ship the tokenized pairs and their reference cache to every rank, once (one object in the store)."""
        import ray

        ref = ray.put(data)
        ray.get([a.load_pairs.remote(ref, pad_id) for a in self.learners])

    def pair_step(self, idx: list[int]) -> dict[str, float] | None:
        import ray

        return ray.get([a.pair_step.remote(idx) for a in self.learners])[0]  # each rank: its share of idx

    def pair_evaluate(self) -> dict[str, float]:
        import ray

        return ray.get([a.pair_evaluate.remote() for a in self.learners])[0]  # each rank: its share

    def save_pretrained(self, directory: str | Path) -> None:
        """The learners' full weights as a save_pretrained directory (rank 0 writes; the checkpoint's `policy/`,
        so the run directory must be on a filesystem rank 0 sees, as for `save_state`)."""
        import ray

        ray.get([a.save_pretrained.remote(str(directory)) for a in self.learners])

    def save_state(self, directory: Path) -> None:
        import ray

        ray.get([a.save_state.remote(str(directory)) for a in self.learners])

    # ---------------------------------------------------------------- checks and teardown
    def logprobs(self, input_ids, attention_mask) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(learner's, [each worker's]) token log-probs of fixed sequences: equal after a sync."""
        import ray

        learner = ray.get([a.logprobs.remote(input_ids, attention_mask) for a in self.learners])[0]
        return learner, ray.get([w.logprobs.remote(input_ids, attention_mask) for w in self.workers])

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        singles = [a for a in (self.reward, self.state_worker) if a is not None]
        for a in [*self.workers, *self.learners, *singles]:
            ray.kill(a, no_restart=True)
        remove_placement_group(self.pg)
