"""The two actor classes of `cluster=ray`, plain classes that ray.py wraps with `ray.remote`.

`LearnerActor`: one DeepSpeed rank. Every method except `address` is collective: the driver calls it on all
ranks at once (ZeRO gathers and reduces across them).
`RolloutWorker`: its own copy of the policy (an HF model, or a vLLM engine under `rollout=vllm`) and an env pool;
plays the episodes it is given.
`RewardWorker`: the reward role, the run's shaper with whatever model it loads (a PRM, a judge model, T-REG's
reference, implicit-Q's two policies); shapes each iteration's batch.
`StateWorker`: a method's state across iterations when it holds a model (ArCHer's utterance critic and replay
buffer); sees each iteration's batch and computes its advantages.

Configs arrive as plain dicts (resolved on the driver, where Hydra's interpolations work).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from calmrl.cluster import weights


def _threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(int(n))


class LearnerActor:
    def __init__(self, rank: int, world_size: int, num_threads: int | None):
        self.rank, self.world = rank, world_size
        _threads(num_threads)
        self.learner = None
        self.pairs = None  # the preference algos' PairRole, after load_pairs

    def address(self) -> tuple[str, int]:
        """(this node's IP, a free port): rank 0's answer becomes everyone's MASTER_ADDR / MASTER_PORT."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def setup(self, master: tuple[str, int], cfg: dict, policy_path: str, base_path: str, state_dir: str | None):
        """Join the process group, load the policy (the reference for a KL term or a method that reads it, the
        critic for a critic method), wrap what trains in DeepSpeed, and restore DeepSpeed's own state from a
        checkpoint's `deepspeed/` when resuming (the critic's included)."""
        from calmrl.algos import ALGOS
        from calmrl.learners.build import reference_and_critic_paths
        from calmrl.learners.deepspeed import DeepSpeedLearner, init_distributed
        from calmrl.policy import load_policy

        init_distributed(self.rank, self.world, master[0], master[1])
        self.base_path = base_path
        algo, learner, policy = (OmegaConf.create(cfg[k]) for k in ("algo", "learner", "policy"))
        self.policy_cfg = policy
        # fp32 on load: DeepSpeed casts the module to bf16 itself when learner.dtype=bfloat16 and keeps fp32
        # master weights in the optimizer
        model, _ = load_policy(policy_path, "float32", policy.trust_remote_code)
        ref_path, critic_path = reference_and_critic_paths(algo, ALGOS.get(algo.name), base_path)
        ref = critic = None
        if ref_path is not None:
            ref, _ = load_policy(ref_path, policy.dtype, policy.trust_remote_code)
            ref.eval().requires_grad_(False)
        if critic_path is not None:
            from calmrl.learners.critic import ValueModel

            critic = ValueModel.from_pretrained(critic_path)  # fp32, as the policy above
        self.learner = DeepSpeedLearner(model, algo, learner, ref_model=ref, critic=critic)
        if state_dir is not None:
            self.learner.load_state(state_dir)
        return self.rank

    def update(self, batch, train_policy: bool, orders: list[torch.Tensor]) -> dict[str, float]:
        return self.learner.update(batch, train_policy=train_policy, orders=orders)

    def reference_logprobs(self, batch) -> torch.Tensor:
        return self.learner.reference_logprobs(batch)

    def current_logprobs(self, batch) -> torch.Tensor:
        return self.learner.current_logprobs(batch)

    def critic_values(self, batch) -> torch.Tensor:
        return self.learner.critic_values(batch)

    def critic_state_dict(self):
        return self.learner.critic_state_dict()

    # ---------------------------------------------------------------- the preference algos (calmrl.learners.pairs)
    def pair_reference(self, data, contrast_prompts, pad_id: int):
        """The reference cache of `data`: each rank loads the initial policy as the reference, scores its share of
        the pairs, and drops the reference again (the cache replaces it). Collective; rank 0 returns the cache."""
        from calmrl.learners.pairs import score_reference
        from calmrl.policy import load_policy

        ref, _ = load_policy(self.base_path, self.policy_cfg.dtype, self.policy_cfg.trust_remote_code)
        ref.to(self.learner.device).eval().requires_grad_(False)
        micro = int(self.learner.cfg.micro_batch_size)
        cache = score_reference(ref, pad_id, data, contrast_prompts, micro, self.rank, self.world)
        return cache if self.rank == 0 else None

    def load_pairs(self, data, pad_id: int) -> None:
        from calmrl.algos import ALGOS
        from calmrl.learners.pairs import PairRole

        method, algo = ALGOS.get(self.learner.algo.name), self.learner.algo
        self.pairs = PairRole(
            self.learner, method.pair_loss, method.needs_token_rewards, algo, pad_id, self.learner.cfg.micro_batch_size
        )
        self.pairs.load(data)

    def pair_step(self, idx: list[int]) -> dict[str, float] | None:
        return self.pairs.train_step(idx)

    def pair_evaluate(self) -> dict[str, float]:
        return self.pairs.evaluate()

    def save_pretrained(self, directory: str) -> None:
        """The full weights as a save_pretrained directory, written by rank 0 (the checkpoint's `policy/`)."""
        self.learner.save_pretrained(directory)

    def export(self, disk_path: str | None = None):
        """Rank 0: the full weights, packed for the object store (or written to `disk_path`, returning the path);
        other ranks: None. Collective under ZeRO-3 (every rank takes part in each gather)."""
        t0 = time.perf_counter()
        state = self.learner.full_state_dict()
        if state is None:
            return None
        gather_s = time.perf_counter() - t0
        if disk_path is not None:
            return str(weights.write(state, Path(disk_path))), gather_s
        return weights.pack(state), gather_s

    def save_state(self, directory: str) -> None:
        self.learner.save_state(directory)

    @torch.no_grad()
    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The learner's token log-probs of fixed sequences (collective under ZeRO-3); for sync checks."""
        from calmrl.learners.torch import token_logprobs

        self.learner.engine.eval()
        dev = self.learner.device
        return token_logprobs(self.learner.engine, input_ids.to(dev), attention_mask.to(dev)).cpu()


class RolloutWorker:
    def __init__(self, index: int, cfg: dict, policy_path: str, num_envs: int, num_threads: int | None):
        from calmrl.algos import ALGOS
        from calmrl.envs import make_pool
        from calmrl.policy import PromptTemplate, load_policy, load_tokenizer
        from calmrl.rollout.generators import build_generators
        from calmrl.runs import pick_device

        self.index = index
        self.cfg = {k: OmegaConf.create(cfg[k]) for k in ("algo", "env", "policy", "rollout")}
        from calmrl.config import hosts_vllm_cpu_engine

        if not hosts_vllm_cpu_engine(self.cfg["rollout"]):  # vLLM's CPU build keeps torch's threads (runs.py)
            _threads(num_threads)
        policy, rollout = self.cfg["policy"], self.cfg["rollout"]
        if rollout.name == "vllm":
            # a vLLM engine per worker (its GPU from the placement bundle); weights arrive through its loader
            self.model, self.tokenizer = None, load_tokenizer(policy_path, policy.trust_remote_code)
        else:
            device = pick_device(cfg["device"])
            self.model, self.tokenizer = load_policy(policy_path, policy.dtype, policy.trust_remote_code, device)
        self.engine, self.sample, self.greedy = build_generators(
            rollout, policy, self.tokenizer, self.model, policy_path, seed=int(cfg.get("seed", 0)) + index
        )
        self.template = PromptTemplate(tokenizer=self.tokenizer, **policy.template)
        self.envs = make_pool(self.cfg["env"], num_envs)
        self.program = ALGOS.get(self.cfg["algo"].name).rollout  # the method's own episode program, if any

    def ping(self) -> int:
        return self.index

    def probe(self) -> list[int] | None:
        """The token ids a vLLM engine's weight syncs are verified on (None for an HF worker: its load is exact)."""
        return None if self.engine is None else list(self.engine.probe)

    def load_weights(self, source, expected: torch.Tensor | None = None) -> float:
        """Load weights from a packed state dict (object store) or a safetensors path (disk); returns seconds.
        expected: the learner's log-probs of `probe()` under these weights, which a vLLM engine must reproduce."""
        t0 = time.perf_counter()
        state = weights.read(source) if isinstance(source, str) else weights.unpack(source)
        if self.engine is not None:
            self.engine.load_weights(state.items(), expected=expected)
        else:
            weights.load_into(self.model, state)
        return time.perf_counter() - t0

    def rollout(self, seeds: list[int], uids: list[int], rng_state: torch.Tensor | None, seed: int | None):
        """Play one episode per seed, with the method's episode program. The torch RNG (sampling) starts from
        `rng_state` (the driver's, so one worker draws exactly what the local trainer would) or from `seed`; its
        end state is returned."""
        from calmrl.rollout import play_episodes

        if rng_state is not None:
            torch.set_rng_state(rng_state)
        else:
            torch.manual_seed(int(seed))
        timings = {"generate": 0.0, "env": 0.0}
        trajs = play_episodes(
            self.program,
            self.envs,
            seeds=seeds,
            uids=uids,
            template=self.template,
            generate=self.sample,
            algo_cfg=self.cfg["algo"],
            env_cfg=self.cfg["env"],
            tokenizer=self.tokenizer,
            timings=timings,
        )
        return trajs, timings, torch.get_rng_state()

    def generate_from(self, prompts: list[str], rng_state: torch.Tensor, greedy: bool = False):
        """Responses to `prompts` outside the episodes it plays: the driver's evaluation (`greedy`: at
        rollout.eval_temperature) or an algo state's sampling between rollouts (ArCHer's critic targets), drawing
        from `rng_state`; returns (generations, end RNG state)."""
        torch.set_rng_state(rng_state)
        return (self.greedy if greedy else self.sample)(prompts), torch.get_rng_state()

    def sleep(self) -> None:
        """Free a vLLM engine's GPU memory for the learners' update (rollout.enable_sleep_mode on a colocated
        placement); the next `load_weights` wakes it. A no-op for an HF worker or without sleep mode."""
        if self.engine is not None:
            self.engine.sleep()

    @torch.no_grad()
    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from calmrl.learners.torch import token_logprobs

        if self.model is None:
            raise RuntimeError(
                "a vLLM rollout worker holds no torch copy of the policy; compare its sampling log-probs"
            )
        self.model.eval()
        dev = next(self.model.parameters()).device
        return token_logprobs(self.model, input_ids.to(dev), attention_mask.to(dev)).cpu()

    def close(self) -> None:
        self.envs.close()


class RewardWorker:
    def __init__(self, cfg: dict, policy_path: str, run_dir: str, num_threads: int | None):
        """The shaper of `cfg["shaper"]`, built as the trainer builds it in one process (the policy's tokenizer and
        initial weights `policy_path`, the run directory for its caches, the env config for an oracle judge)."""
        from calmrl.policy import load_tokenizer
        from calmrl.runs import pick_device
        from calmrl.shapers import ShaperContext, build_shaper

        _threads(num_threads)
        shaper, env, policy = (OmegaConf.create(cfg[k]) for k in ("shaper", "env", "policy"))
        tokenizer = load_tokenizer(policy_path, policy.trust_remote_code)
        context = ShaperContext(tokenizer, pick_device(cfg["device"]), Path(run_dir), Path(policy_path), env)
        self.shaper = build_shaper(shaper, context)

    def ping(self) -> int:
        return 0

    def shape(self, batch, trajectories, rng_state: torch.Tensor):
        """(the shaped batch, the shaper's own counters (`metrics()`, if it keeps any), the end RNG state): drawing
        from `rng_state`, the driver's, as the shaper would in the trainer's process."""
        torch.set_rng_state(rng_state)
        shaped = self.shaper(batch, trajectories)
        return shaped, getattr(self.shaper, "metrics", dict)(), torch.get_rng_state()


class StateWorker:
    def __init__(self, cfg: dict, policy_path: str, run_dir: str, num_threads: int | None):
        _threads(num_threads)
        self.cfg, self.policy_path, self.run_dir = cfg, policy_path, run_dir
        self.state = self.batch = None

    def ping(self) -> int:
        return 0

    def build(self, rng_state: torch.Tensor, saved: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Build the state of `cfg["algo"]` as the trainer builds it in one process (the policy's tokenizer and
        initial weights, the run directory, the run's seed), drawing its initial weights from `rng_state`, the
        driver's; load a resumed run's `saved` tensors. Returns the end RNG state."""
        from calmrl.algos import ALGOS
        from calmrl.policy import load_tokenizer
        from calmrl.runs import pick_device

        torch.set_rng_state(rng_state)
        algo, policy = (OmegaConf.create(self.cfg[k]) for k in ("algo", "policy"))
        self.method, self.algo = ALGOS.get(algo.name), algo
        tokenizer = load_tokenizer(self.policy_path, policy.trust_remote_code)
        self.state = self.method.state(
            algo,
            tokenizer=tokenizer,
            policy_path=Path(self.policy_path),
            run_dir=Path(self.run_dir),
            device=pick_device(self.cfg["device"]),
            seed=int(self.cfg["seed"]),
        )
        if saved is not None:
            self.state.load_state_dict(saved)
        return torch.get_rng_state()

    def begin(self, trajectories, batch, it: int) -> list[list[str]]:
        """The first half of the state's iteration (AlgoState.begin): the prompts it wants the policy's answers to."""
        self.batch = batch
        return self.state.begin(trajectories, batch, it)

    def end(self, responses: list[list[str]]) -> tuple[dict[str, float], torch.Tensor]:
        """(the state's metrics, the advantages [N, L] of the batch `begin` was given)."""
        metrics = self.state.end(responses)
        return metrics, self.method(self.batch, self.algo, state=self.state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state.state_dict()


def worker_seed(seed: int, it: int, index: int) -> int:
    """The sampling seed of rollout worker `index` > 0 in iteration `it` (worker 0 continues the driver's RNG)."""
    return int(np.random.default_rng([seed, it, index]).integers(2**62))
