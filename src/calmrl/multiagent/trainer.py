"""The multi-agent loop (`algo=gmah` or `algo=ippo` with `env=multigrid`): play, update, evaluate, checkpoint.

These methods train small torch networks, not a language model, so they have their own loop; logging,
checkpoints (atomic, safetensors, `resume=auto`) and the seed discipline are the ones the LLM trainer uses.
Training batches of iteration `it` use the seed drawn from (seed, it) below `env.eval_seed_offset`; the
held-out evaluation always plays the batch at `env.eval_seed_offset`, greedily.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file

from calmrl.envs.multigrid import MultiGrid
from calmrl.learners.checkpoint import restore_rng
from calmrl.multiagent.gmah import GMAHAgent
from calmrl.multiagent.ippo import IPPOAgent
from calmrl.runs import start_run
from calmrl.schedule import rate_text, run_schedule

AGENTS = {"gmah": GMAHAgent, "ippo": IPPOAgent}


def make_multigrid(env_cfg, num_envs: int) -> MultiGrid:
    return MultiGrid(
        num_envs,
        size=env_cfg.size,
        agents=env_cfg.agents,
        dirt=env_cfg.dirt,
        max_steps=env_cfg.max_steps,
        step_cost=env_cfg.step_cost,
    )


@torch.no_grad()
def random_policy_success(env: MultiGrid, seed: int) -> float:
    """Team success of uniformly random moves on the batch `seed` (the floor any learner must beat)."""
    env.reset(seed)
    g = torch.Generator().manual_seed(seed)
    while not env.done.all():
        env.step(torch.randint(0, 5, (env.num_envs, env.n), generator=g))
    return float((~env.dirt.any(1)).float().mean())


class _Networks:
    """Lets CheckpointManager write the agent's networks where it writes a policy (safetensors)."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.modules = modules

    def save_pretrained(self, path: Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{name}.{k}": v.detach().clone().contiguous()
            for name, m in self.modules.items()
            for k, v in m.state_dict().items()
        }
        save_file(tensors, Path(path) / "networks.safetensors")

    def load(self, path: Path) -> None:
        tensors = load_file(Path(path) / "networks.safetensors")
        for name, m in self.modules.items():
            prefix = f"{name}."
            m.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})


def _train_seed(seed: int, it: int, eval_offset: int) -> int:
    return int(np.random.default_rng([seed, it]).integers(0, eval_offset))


class MultiAgentTrainer:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        start_run(self, cfg, run_dir)  # the LLM loop's threads, checkpoints, resume rules and seeding
        self.env = make_multigrid(cfg.env, cfg.algo.num_envs)
        self.eval_env = make_multigrid(cfg.env, cfg.env.eval_episodes)
        self.agent = AGENTS[cfg.algo.name](self.env, cfg.algo, cfg.seed)
        self.networks = _Networks(self.agent.networks())
        self.start_iter, self.state = 0, {}
        latest = self.resume_from
        if latest is not None:
            self.networks.load(latest.policy_dir)
            self.agent.optimizer.load_state_dict(latest.optimizer_state())
            self.agent.rng.set_state(latest.extra_state_dict("rng")["agent"])
            for name, buffer in self.agent.buffers().items():
                buffer.load_state_dict(latest.extra_state_dict(name) or {})
            restore_rng(latest.rng_state)
            self.start_iter, self.state = latest.step, dict(latest.trainer_state)

    def evaluate(self) -> dict[str, float]:
        return self.agent.evaluate(self.eval_env, self.cfg.env.eval_seed_offset)

    def train_iteration(self, it: int) -> dict[str, float]:
        cfg = self.cfg
        seed = _train_seed(cfg.seed, it, cfg.env.eval_seed_offset)
        t0 = time.perf_counter()
        stats = self.agent.collect(self.env, seed, it)
        t1 = time.perf_counter()
        losses = self.agent.update()
        t2 = time.perf_counter()
        metrics = {f"rollout/{k}": v for k, v in stats.items() if k != "env_steps"}
        metrics.update(losses)
        metrics.update({"perf/steps": stats["env_steps"], "perf/rollout_s": t1 - t0, "perf/update_s": t2 - t1})
        return metrics

    # ---------------------------------------------------------------- the schedule's hooks (calmrl.schedule)
    def run(self) -> dict:
        return run_schedule(self)

    def startup_messages(self) -> list[str]:
        return []

    def evaluation(self) -> dict:
        if "random_success" not in self.state:  # the baseline the summary reports against, once per run
            self.state["random_success"] = random_policy_success(self.eval_env, self.cfg.env.eval_seed_offset)
        return self.evaluate()

    def describe_initial(self, evaluation: dict) -> str:
        cfg = self.cfg
        return (
            f"team success on {cfg.env.eval_episodes} held-out episodes: random policy "
            f"{self.state['random_success']:.3f}, untrained {cfg.algo.name} {evaluation['success_rate']:.3f}"
        )

    def eval_metrics(self, evaluation: dict) -> dict[str, float]:
        out = {f"eval/{k}": v for k, v in evaluation.items() if k != "env_steps"}
        return {**out, "eval/random_success_rate": self.state["random_success"]}

    def save_checkpoint(self, it: int) -> None:
        self.checkpoints.save(
            it,
            self.networks,
            optimizer_state=self.agent.optimizer.state_dict(),
            trainer_state=self.state,
            extra={
                "rng": {"agent": self.agent.rng.get_state()},
                **{name: b.state_dict() for name, b in self.agent.buffers().items()},
            },
        )

    def summarize(self, initial: dict, final: dict) -> tuple[dict, str]:
        cfg = self.cfg
        summary = {
            "random_success_rate": self.state["random_success"],
            "initial_success_rate": initial["success_rate"],
            "final_success_rate": final.get("success_rate"),
            "iterations": cfg.trainer.total_iters,
            "metrics_file": str(self.run_dir / "metrics.jsonl"),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        message = (
            f"\n[bold]team success on {cfg.env.eval_episodes} held-out episodes: random policy "
            f"{summary['random_success_rate']:.3f} -> trained {cfg.algo.name} "
            f"{rate_text(summary['final_success_rate'])}[/bold]\n"
            f"metrics: {summary['metrics_file']}"
        )
        return summary, message
