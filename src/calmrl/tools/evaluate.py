"""Held-out evaluation: play one episode per evaluation seed and summarise it.

Used by the trainer's periodic greedy evaluation and by `calmrl eval`. Evaluation seeds are
`env.eval_seed_offset + i` for i in 0..episodes-1, disjoint from the training seeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from calmrl.data import Trajectory
from calmrl.rollout.episodes import GenerateFn, run_episodes


@dataclass
class EvalResult:
    success_rate: float
    episode_return: float
    episode_len: float
    invalid_rate: float
    episodes: int
    # per `info["category"]` of the episodes' steps (ALFWorld task type, MultiTurnInstruct category, ...):
    # {category: {"success_rate", "episode_return", "episodes"}}; empty when the env reports no categories
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)


def eval_seeds(eval_seed_offset: int, episodes: int) -> list[int]:
    return [eval_seed_offset + i for i in range(episodes)]


def evaluate(envs, template, generate: GenerateFn, env_cfg) -> tuple[EvalResult, list[Trajectory]]:
    """One episode in each of `envs` on the evaluation seeds; returns the summary and the trajectories."""
    seeds = eval_seeds(env_cfg.eval_seed_offset, len(envs))
    trajs = run_episodes(
        envs, seeds, list(range(len(envs))), template, generate, env_cfg.invalid_penalty, env_cfg.max_steps
    )
    steps = [s for t in trajs for s in t.steps]
    result = EvalResult(
        success_rate=float(np.mean([t.success for t in trajs])),
        episode_return=float(np.mean([t.episode_return for t in trajs])),
        episode_len=float(np.mean([len(t.steps) for t in trajs])),
        invalid_rate=float(np.mean([s.invalid for s in steps])) if steps else 0.0,
        episodes=len(trajs),
        per_category=per_category(trajs),
    )
    return result, trajs


def episode_category(traj: Trajectory) -> str | None:
    """The category an env reported for this episode: at reset (Observation.category) or in a step's info."""
    if traj.category is not None:
        return traj.category
    for step in reversed(traj.steps):
        if "category" in step.info:
            return str(step.info["category"])
    return None


def per_category(trajs: list[Trajectory]) -> dict[str, dict[str, float]]:
    """Success rate, mean return and episode count per reported category, categories sorted by name."""
    groups: dict[str, list[Trajectory]] = {}
    for t in trajs:
        category = episode_category(t)
        if category is not None:
            groups.setdefault(category, []).append(t)
    return {
        name: {
            "success_rate": float(np.mean([t.success for t in members])),
            "episode_return": float(np.mean([t.episode_return for t in members])),
            "episodes": len(members),
        }
        for name, members in sorted(groups.items())
    }


def run_eval_command(cfg, out_dir: Path) -> dict:
    """`calmrl eval`: load a policy (a checkpoint, a run's newest valid checkpoint, or policy.path), evaluate
    it on the env's held-out seeds, print the summary and write `eval_report.json` into `out_dir`."""
    import torch
    from omegaconf import OmegaConf

    from calmrl.envs import make_pool
    from calmrl.errors import ConfigError
    from calmrl.learners.checkpoint import CheckpointError, CheckpointManager
    from calmrl.policy import PromptTemplate, load_policy
    from calmrl.rollout import HFGenerator
    from calmrl.runs import pick_device

    policy_dir, source = _resolve_policy(cfg, CheckpointManager, CheckpointError, ConfigError)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_policy(
        policy_dir, cfg.policy.dtype, cfg.policy.trust_remote_code, pick_device(str(cfg.device))
    )
    template = PromptTemplate(tokenizer=tokenizer, **cfg.policy.template)
    decode = cfg.get("decode") or {"name": "sample"}
    r = cfg.rollout
    if r.name == "vllm" and decode["name"] == "sample":  # the engine the run sampled with (CPU or GPU build)
        from calmrl.rollout.vllm import VLLMEngine, VLLMGenerator

        engine = VLLMEngine.from_config(r, cfg.policy, policy_dir, tokenizer, seed=int(cfg.seed))
        generate = VLLMGenerator(engine, tokenizer, r.max_new_tokens, r.eval_temperature, r.generation_batch_size)
    else:
        generate = HFGenerator(model, tokenizer, r.max_new_tokens, r.eval_temperature, r.generation_batch_size)
    if decode["name"] == "implicit_q_beam":  # beam search on a DPO policy's implicit token reward
        from calmrl.rollout.implicit_q_beam import build_implicit_q_beam

        generate = build_implicit_q_beam(cfg, model, tokenizer, policy_dir, pick_device(str(cfg.device)))
    envs = make_pool(cfg.env, cfg.env.eval_episodes)
    start = time.perf_counter()
    try:
        result, trajs = evaluate(envs, template, generate, cfg.env)
    finally:
        envs.close()
    report = {
        "policy": str(policy_dir),
        "source": source,
        "env": OmegaConf.to_container(cfg.env, resolve=True),
        "temperature": cfg.rollout.eval_temperature,
        "decode": OmegaConf.to_container(decode, resolve=True) if OmegaConf.is_config(decode) else decode,
        "seeds": eval_seeds(cfg.env.eval_seed_offset, cfg.env.eval_episodes),
        **asdict(result),
        "env_errors": sum(t.error is not None for t in trajs),
        "seconds": time.perf_counter() - start,
        "per_episode": [
            {
                "seed": t.seed,
                "category": episode_category(t),
                "success": t.success,
                "return": t.episode_return,
                "steps": len(t.steps),
                "error": t.error,
            }
            for t in trajs
        ],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "eval_report.json"
    path.write_text(json.dumps(report, indent=2))
    mode = "greedy" if cfg.rollout.eval_temperature == 0 else f"temperature {cfg.rollout.eval_temperature}"
    if decode["name"] == "implicit_q_beam":
        mode = f"implicit-Q beam search, width {decode['beam_width']}, beta {decode['beta']}"
    print(
        f"{cfg.env.name}: success {result.success_rate:.3f} ({mode}, {result.episodes} held-out seeds), "
        f"mean return {result.episode_return:.3f}, mean length {result.episode_len:.1f}, "
        f"invalid actions {result.invalid_rate:.3f}"
    )
    for name, stats in result.per_category.items():
        print(
            f"  {name:<40} success {stats['success_rate']:.3f}  return {stats['episode_return']:+.3f}  "
            f"({stats['episodes']} episodes)"
        )
    print(f"report: {path}")
    return report


def _resolve_policy(cfg, CheckpointManager, CheckpointError, ConfigError) -> tuple[Path, str]:
    """The save_pretrained directory to evaluate, and a word on where it came from."""
    if cfg.checkpoint:
        given = Path(cfg.checkpoint).expanduser()
        if (given / "manifest.json").is_file():  # one checkpoint directory
            manager = CheckpointManager(given.parent)
            try:
                return manager.load(given).policy_dir, f"checkpoint {given}"
            except CheckpointError as exc:
                raise ConfigError(str(exc)) from None
        checkpoints = given / "checkpoints" if (given / "checkpoints").is_dir() else given
        latest = CheckpointManager(checkpoints).latest() if checkpoints.is_dir() else None
        if latest is None:
            raise ConfigError(
                f"checkpoint={cfg.checkpoint}: no valid checkpoint there (give a run directory, its "
                "checkpoints/ folder, or one step_XXXXXXXX directory)"
            )
        return latest.policy_dir, f"newest valid checkpoint of {given} (step {latest.step})"
    if cfg.policy.path:
        return Path(cfg.policy.path).expanduser(), "policy.path"
    raise ConfigError("calmrl eval needs checkpoint=<run dir or checkpoint dir> or policy.path=<model dir>")
