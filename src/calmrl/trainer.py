"""The training loop, written once: roll out, shape, assign credit, update, log, evaluate, checkpoint.

    for it in 1..total_iters:
        trajectories = rollout(policy, envs, num_groups tasks x group_size samples)
        batch        = shaper(build_batch(trajectories))
        advantages   = algo(batch)                       # credit assignment: [N, L]
        learner.update(batch)                            # policy loss (+ KL), one or more epochs
        every eval_every:       greedy success on held-out seeds
        every checkpoint_every: atomic checkpoint (weights, optimizer, RNG, step)

Training seeds of iteration `it` are a pure function of (seed, it), so a resumed run replays exactly
the tasks it would have seen; evaluation seeds come from a disjoint range.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from calmrl.algos import ALGOS
from calmrl.algos.registry import observe
from calmrl.algos.segments import group_index
from calmrl.credit_checks import credit_metrics, train_loss_mask
from calmrl.data import Batch, apply_penalty_rule, build_batch, fold_shaping, penalty_rule
from calmrl.envs import make_env, make_pool
from calmrl.errors import ConfigError
from calmrl.learners.build import build_local_learner, reference_and_critic_paths
from calmrl.learners.checkpoint import restore_rng
from calmrl.learners.critic import ValueModel
from calmrl.policy import PromptTemplate, build_tiny_policy, load_policy
from calmrl.policy.loading import DTYPES
from calmrl.recording import RolloutRecorder
from calmrl.rollout import play_episodes
from calmrl.rollout.generators import build_generators
from calmrl.rollout.mismatch import correct, mismatch_metrics
from calmrl.runs import start_run, train_seeds
from calmrl.schedule import rate_text, run_schedule
from calmrl.shapers import ShaperContext, build_shaper
from calmrl.tools.evaluate import EvalResult, evaluate


class Trainer:
    """The RL loop on rollouts, in one process (`calmrl.loops.build_trainer` picks the loop a config runs)."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        start_run(self, cfg, run_dir)

        base_path = self._policy_path()
        load_path = self.resume_from.policy_dir if self.resume_from else base_path
        self.model, self.tokenizer = self.load_policy_copy(load_path)
        self.method = ALGOS.get(cfg.algo.name)
        self.template = PromptTemplate(tokenizer=self.tokenizer, **cfg.policy.template)
        self.learner = self.build_learner(base_path)
        self.shaper = self.build_reward(base_path)
        # algos with state across iterations (ArCHer's utterance critic, MA-PPO's parse table): see AlgoState
        self.algo_state = self.build_algo_state(base_path) if self.method.state is not None else None
        self.engine, self.sample, self.greedy = self.build_generators(load_path)
        self.policy_weights = self.model  # what the checkpoint's policy/ is written from (save_pretrained)
        n = cfg.rollout.num_groups * cfg.rollout.group_size
        self.train_envs = make_pool(cfg.env, n)
        self.eval_envs = make_pool(cfg.env, cfg.env.eval_episodes)

        self.start_iter = 0
        self.state: dict = {}
        if self.resume_from is not None:
            opt_state = self.resume_from.optimizer_state()
            if opt_state is not None:
                self.learner.load_optimizer_state(opt_state)
            restore_rng(self.resume_from.rng_state)
            self.start_iter = self.resume_from.step
            self.state = dict(self.resume_from.trainer_state)
        t = cfg.trainer
        self.recorder = RolloutRecorder(self.run_dir, t.record_rollouts, t.record_budget_mb, self.start_iter)

    # ---------------------------------------------------------------- setup helpers: the roles this process hosts
    def load_policy_copy(self, path: Path):
        """(the policy module this process trains and generates with, its tokenizer)."""
        cfg = self.cfg
        return load_policy(path, cfg.policy.dtype, cfg.policy.trust_remote_code, self.device)

    def build_generators(self, load_path: Path):
        """(engine, sample, greedy) of the rollout role: see `calmrl.rollout.generators.build_generators`."""
        cfg = self.cfg
        return build_generators(cfg.rollout, cfg.policy, self.tokenizer, self.model, load_path, seed=cfg.seed)

    def build_learner(self, base_path: Path):
        """The policy role in this process, with the reference (a KL term, or a method that reads ref_logprobs) and
        critic roles it hosts (`calmrl.learners.build`). RayTrainer overrides this: its learner ranks are Ray actors,
        which load their own."""
        cfg = self.cfg
        ref_path, critic_path = reference_and_critic_paths(cfg.algo, self.method, base_path)
        ref_model = None
        if ref_path is not None:
            ref_model, _ = load_policy(ref_path, cfg.policy.dtype, cfg.policy.trust_remote_code, self.device)
            ref_model.eval().requires_grad_(False)
        critic = self._build_critic(critic_path) if critic_path is not None else None
        learner, self.checkpoints = build_local_learner(
            cfg, self.model, self.resume_from, self.checkpoints, ref_model=ref_model, critic=critic
        )
        return learner

    def build_reward(self, base_path: Path):
        """The reward role: the run's shaper (`calmrl.shapers`), in this process. RayTrainer overrides this: its
        shaper runs on the reward worker."""
        cfg = self.cfg
        context = ShaperContext(
            tokenizer=self.tokenizer, device=self.device, run_dir=self.run_dir, policy_path=base_path, env_cfg=cfg.env
        )
        return build_shaper(cfg.shaper, context)

    def build_algo_state(self, base_path: Path) -> LocalAlgoState:
        """The method's state across iterations, in this process, with a resumed run's tensors. RayTrainer
        overrides this for a state that holds a model: it lives on the state worker."""
        cfg = self.cfg
        state = self.method.state(
            cfg.algo,
            tokenizer=self.tokenizer,
            policy_path=base_path,
            run_dir=self.run_dir,
            device=self.device,
            seed=cfg.seed,
        )
        saved = self.saved_algo_state()
        if saved is not None:
            state.load_state_dict(saved)
        return LocalAlgoState(self.method, cfg.algo, state)

    def saved_algo_state(self) -> dict[str, torch.Tensor] | None:
        """The algo state a resumed run's checkpoint holds (None for a fresh run); an error if it holds none."""
        if self.resume_from is None:
            return None
        saved = self.resume_from.extra_state_dict("algo_state")
        if saved is None:
            raise ConfigError(
                f"{self.resume_from.path} holds no algo state; it was not written by algo={self.cfg.algo.name}"
            )
        return saved

    def _build_critic(self, critic_path: Path) -> ValueModel:
        """The value model loaded from `critic_path`, with a resumed run's weights."""
        cfg = self.cfg
        critic = ValueModel.from_pretrained(critic_path, DTYPES[str(cfg.policy.dtype)]).to(self.device)
        if self.resume_from is not None:
            state = self.resume_from.extra_state_dict("critic")
            if state is None:
                raise ConfigError(
                    f"{self.resume_from.path} holds no critic; it was not written by algo={cfg.algo.name}"
                )
            critic.load_state_dict(state)
        return critic

    def _policy_path(self) -> Path:
        if self.cfg.policy.path:
            return Path(self.cfg.policy.path).expanduser()
        words = list(make_env(self.cfg.env).vocabulary()) + PromptTemplate.vocabulary()
        return build_tiny_policy(self.run_dir / "tiny_policy", words, self.cfg.policy)

    # ---------------------------------------------------------------- the loop
    def episode_seeds(self, it: int) -> tuple[list[int], list[int]]:
        """(env seed, group uid) of every episode of iteration `it`: rollout.group_size episodes per task seed."""
        cfg = self.cfg
        seeds = train_seeds(cfg.seed, it, cfg.rollout.num_groups, cfg.env.eval_seed_offset)
        g = cfg.rollout.group_size
        return [s for s in seeds for _ in range(g)], [u for u in range(len(seeds)) for _ in range(g)]

    def rollout(self, it: int, timings: dict[str, float]):
        cfg = self.cfg
        seeds, uids = self.episode_seeds(it)
        return play_episodes(
            self.method.rollout,
            self.train_envs,
            seeds=seeds,
            uids=uids,
            template=self.template,
            generate=self.sample,
            algo_cfg=cfg.algo,
            env_cfg=cfg.env,
            tokenizer=self.tokenizer,
            timings=timings,
        )

    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """Greedy (rollout.eval_temperature) success on the held-out evaluation seeds."""
        return evaluate(self.eval_envs, self.template, self.greedy, self.cfg.env)[0]

    def train_iteration(self, it: int) -> dict[str, float]:
        cfg = self.cfg
        timings: dict[str, float] = {"generate": 0.0, "env": 0.0}
        t0 = time.perf_counter()
        trajs = self.rollout(it, timings)
        errors = sum(t.error is not None for t in trajs)
        used = [t for t in trajs if t.error is None] if cfg.trainer.drop_env_errors else trajs
        t1 = time.perf_counter()
        if not any(t.steps for t in used):
            # Every env of the iteration failed (each logged as it failed): there is nothing to learn from,
            # but a crashed env must end only its trajectories, never the run. Skip the update.
            return {
                "rollout/success_rate": float(np.mean([t.success for t in trajs])),
                "rollout/env_errors": float(errors),
                "loss/skipped_steps": 0.0,
                "loss/optimizer_steps": 0.0,
                "perf/generate_s": timings["generate"],
                "perf/env_s": timings["env"],
                "perf/steps": 0.0,
            }
        batch = self.shaper(build_batch(used, self.tokenizer.pad_token_id), used)
        # a recording keeps the shaped batch as every estimator gets it, before this method folds it its own way
        recorded = Batch(**vars(batch)) if self.recorder.due(it) else None
        # a shaper may count its own work (judge requests, cache hits, failures) as `metrics()`
        shaping = {**_shaping_metrics(batch), **getattr(self.shaper, "metrics", dict)()}
        batch = fold_shaping(batch, keep_token_rewards=self.method.reads_token_rewards)
        batch = apply_penalty_rule(batch, penalty_rule(cfg.algo))
        if self.method.needs_ref:
            batch.ref_logprobs = self.learner.reference_logprobs(batch)
        if self.method.needs_critic:
            batch.values = self.learner.critic_values(batch)
        algo_metrics = {}
        if self.algo_state is not None:
            sample = lambda prompts: [g.text for g in self.sample(prompts)]  # noqa: E731
            algo_metrics = self.algo_state.observe(used, batch, it, sample)
            batch.advantages = self.algo_state.advantages(batch)
        else:
            batch.advantages = self.method(batch, cfg.algo)
        # the engine's sampling log-probs against the learner's own: logged, and corrected if rollout.correction says
        # (one no-grad pass over the batch: every rollout.mismatch_every iterations, or each one a correction needs it)
        train_batch, mismatch, corrected, learner_logprobs = batch, {}, {}, None
        every = int(cfg.rollout.mismatch_every)
        if cfg.rollout.correction != "none" or (every > 0 and it % every == 0):
            learner_logprobs = self.learner.current_logprobs(batch)
            mismatch = mismatch_metrics(learner_logprobs, batch.old_logprobs, batch.response_mask)
            train_batch, corrected = correct(batch, learner_logprobs, cfg.rollout)
        t2 = time.perf_counter()
        if self.engine is not None:
            self.engine.sleep()  # colocated: the learner gets vLLM's GPU memory for the update
        update = self.learner.update(train_batch, train_policy=it > cfg.algo.get("critic_warmup_iters", 0))
        t3 = time.perf_counter()
        if self.engine is not None:  # the next rollout samples from the updated policy
            gap = self.engine.sync_from(self.model)  # verified on a probe; raises WeightSyncError on a bad sync
            update = {**update, "perf/weight_sync_s": time.perf_counter() - t3, "rollout/sync_probe_gap": gap}
        if recorded is not None:
            update = {**update, **self.record(it, recorded, batch, learner_logprobs)}

        adv_rows = batch.advantages.sum(1) / batch.response_mask.sum(1).clamp(min=1)
        # how often states repeat inside a group: what step-level credit (GiGPO's anchor groups) can use
        anchor_group, _ = group_index(batch.uid, batch.anchor)
        anchor_group_size = torch.bincount(anchor_group)[anchor_group].float()
        metrics = {
            "rollout/success_rate": float(np.mean([t.success for t in trajs])),
            "rollout/episode_return": float(np.mean([t.episode_return for t in used])) if used else 0.0,
            "rollout/episode_len": float(np.mean([len(t.steps) for t in trajs])),
            "rollout/invalid_rate": float(batch.invalid.float().mean()),
            "rollout/response_tokens": float(batch.response_mask.sum(1).mean()),
            "rollout/env_errors": float(errors),
            "reward/step_mean": float((batch.rewards if batch.env_rewards is None else batch.env_rewards).mean()),
            "credit/adv_mean": float(adv_rows.mean()),
            "credit/adv_std": float(adv_rows.std()) if len(adv_rows) > 1 else 0.0,
            "credit/adv_abs_max": float(adv_rows.abs().max()),
            "credit/zero_adv_frac": float((adv_rows == 0).float().mean()),
            "credit/anchor_group_size": float(anchor_group_size.mean()),
            "credit/repeated_anchor_frac": float((anchor_group_size > 1).float().mean()),
            # where credit is zero and why (including tokens the correction masked out), and credit where none belongs
            **credit_metrics(batch, trained=train_loss_mask(train_batch)),
            **shaping,
            **mismatch,
            **corrected,
            **update,
            **algo_metrics,
            "perf/generate_s": timings["generate"],
            "perf/env_s": timings["env"],
            "perf/rollout_other_s": (t1 - t0) - timings["generate"] - timings["env"],
            "perf/credit_s": t2 - t1,
            "perf/update_s": t3 - t2,
            "perf/steps": float(len(batch)),
        }
        return metrics

    def record(self, it: int, shaped, batch, learner_logprobs) -> dict[str, float]:
        """Write iteration `it`'s recording (`calmrl.recording`): the shaped batch, with what the run computed on it
        (its algo's advantages and returns, the reference log-probs and critic values it needed, the learner's own
        log-probs when this iteration computed them)."""
        t0 = time.perf_counter()
        shaped.advantages, shaped.returns = batch.advantages, batch.returns
        shaped.ref_logprobs, shaped.values = batch.ref_logprobs, batch.values
        extra = {"learner_logprobs": learner_logprobs} if learner_logprobs is not None else {}
        # iteration `it` samples from the weights after it - 1 updates
        meta = {"iteration": it, "policy_version": it - 1, "config": OmegaConf.to_container(self.cfg, resolve=True)}
        size = self.recorder.record(it, shaped, meta, extra)
        return {"perf/record_s": time.perf_counter() - t0, "record/bytes": float(size)}

    # ---------------------------------------------------------------- the schedule's hooks (calmrl.schedule)
    def run(self) -> dict:
        try:
            return run_schedule(self)
        finally:
            self.train_envs.close()
            self.eval_envs.close()

    def startup_messages(self) -> list[str]:
        return []

    def evaluation(self) -> dict:
        return vars(self.evaluate())

    def describe_initial(self, evaluation: dict) -> str:
        return (
            f"untrained greedy success on {self.cfg.env.eval_episodes} held-out seeds: {evaluation['success_rate']:.3f}"
        )

    def eval_metrics(self, evaluation: dict) -> dict[str, float]:
        """`eval/<field>` for the scalar summary, `eval/<category>/success_rate` for each reported category."""
        out = {f"eval/{k}": v for k, v in evaluation.items() if k != "per_category"}
        for name, stats in evaluation["per_category"].items():
            out[f"eval/{name}/success_rate"] = stats["success_rate"]
        return out

    def save_checkpoint(self, it: int) -> None:
        critic = self.learner.critic_state_dict()
        self.checkpoints.save(
            it,
            self.policy_weights,
            self.tokenizer,
            self.learner.optimizer_state(),
            trainer_state=self.state,
            extra={
                **({"critic": critic} if critic is not None else {}),
                **({"algo_state": self.algo_state.state_dict()} if self.algo_state is not None else {}),
            },
        )

    def summarize(self, initial: dict, final: dict) -> tuple[dict, str]:
        summary = {
            "initial_success_rate": initial["success_rate"],
            "final_success_rate": final.get("success_rate"),
            "iterations": self.cfg.trainer.total_iters,
            "metrics_file": str(self.run_dir / "metrics.jsonl"),
            "checkpoint_dir": str(self.checkpoints.directory),
        }
        message = (
            f"\n[bold]greedy success on {self.cfg.env.eval_episodes} held-out seeds: untrained "
            f"{summary['initial_success_rate']:.3f} -> trained {rate_text(summary['final_success_rate'])}[/bold]\n"
            f"metrics: {summary['metrics_file']}\ncheckpoints: {summary['checkpoint_dir']}"
        )
        return summary, message


class LocalAlgoState:
    """The loop's view of a method's state across iterations (`calmrl.algos.registry.AlgoState`), hosted in this
    process. `calmrl.cluster.trainer.RemoteAlgoState` is the same view of one on the state worker."""

    def __init__(self, method, algo_cfg, state):
        self.method, self.algo, self.state = method, algo_cfg, state

    def observe(self, trajectories, batch, it: int, sample) -> dict[str, float]:
        """The state sees this iteration (`sample(prompts) -> texts` answers its questions to the policy)."""
        return observe(self.state, trajectories, batch, it, sample)

    def advantages(self, batch) -> torch.Tensor:
        """advantages [N, L] of the batch the state last observed."""
        return self.method(batch, self.algo, state=self.state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state.state_dict()


def _shaping_metrics(batch) -> dict[str, float]:
    """Size of the dense rewards a shaper added this iteration (nothing when it added none)."""
    out = {}
    if batch.step_bonus is not None:
        out["reward/step_bonus_mean"] = float(batch.step_bonus.mean())
        out["reward/step_bonus_nonzero_frac"] = float((batch.step_bonus != 0).float().mean())
    if batch.token_rewards is not None:
        per_row = (batch.token_rewards * batch.response_mask).sum(dim=1)
        out["reward/token_reward_row_mean"] = float(per_row.mean())
    return out
