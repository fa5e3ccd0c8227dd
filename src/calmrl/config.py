"""Structured-config schemas: every config group option extends one of these dataclasses.

Hydra checks types and enum choices while composing (so `algo.lr=abc` or `algo.norm_adv=foo` fails
before anything heavy is imported); `validate` then checks ranges and cross-group compatibility.
Each yaml in `conf/<group>/` starts with `defaults: [/schema/<group>/<schema>@_here_, _self_]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig


class ConfigError(ValueError):
    """A config value a user must change; the message says which and how."""


class Norm(StrEnum):
    std = "std"  # (R - mean) / (std + eps)
    mean = "mean"  # R - mean (Dr.GRPO-style, no std division)


class Loss(StrEnum):
    ppo_clip = "ppo_clip"
    reinforce = "reinforce"


class Anchor(StrEnum):
    exact = "exact"  # identical anchor strings form a step group
    similarity = "similarity"  # anchors with text similarity >= threshold are clustered (greedy)


class EpisodeStats(StrEnum):
    trajectory = "trajectory"  # one member per trajectory in the episode-level group statistics
    step_rows = "step_rows"  # one member per step row (the reference code's weighting)


class Critic(StrEnum):
    separate = "separate"  # a separate critic: the policy's trunk (a copy) with a scalar value head


class PromptFormat(StrEnum):
    plain = "plain"  # the first line of the response is the action
    tagged = "tagged"  # <think>...</think><action>...</action>


class EnvPoolKind(StrEnum):
    inline = "inline"  # envs in the training process; exceptions are caught per env
    process = "process"  # one worker process per env, stepped in parallel, with a per-call timeout


class Resume(StrEnum):
    auto = "auto"  # continue from the newest valid checkpoint of the run directory, if any
    never = "never"  # start fresh; refuse to overwrite a run directory that holds checkpoints


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


# ---------------------------------------------------------------- env
@dataclass
class EnvConfig:
    name: str = MISSING
    max_steps: int = 12  # turns per episode
    invalid_penalty: float = 0.1  # subtracted from a step's reward when its action is invalid
    eval_episodes: int = 64  # held-out episodes per greedy evaluation
    eval_seed_offset: int = 1_000_000_000  # eval seeds start here; training seeds stay below it
    pool: EnvPoolKind = EnvPoolKind.inline
    timeout_s: float = 60.0  # process pool: a reset/step slower than this ends that trajectory


@dataclass
class GridWorldConfig(EnvConfig):
    size: int = 5
    walls: int = 3
    key: bool = False
    distances: bool = False  # "goal 2 north" (true) or "goal north" (false)
    walls_text: bool = False  # also name the blocked directions ("wall east .")


# ---------------------------------------------------------------- policy
@dataclass
class TemplateConfig:
    format: PromptFormat = PromptFormat.plain
    history_len: int = 2  # past (observation, action) pairs shown in the prompt
    chat: bool = False  # wrap the prompt in the tokenizer's chat template


@dataclass
class PolicyConfig:
    name: str = MISSING
    path: str | None = None  # a save_pretrained directory (config.json + safetensors + tokenizer)
    dtype: DType = DType.float32
    trust_remote_code: bool = False
    max_new_tokens: int = 256  # response budget per turn
    template: TemplateConfig = field(default_factory=TemplateConfig)


@dataclass
class TinyPolicyConfig(PolicyConfig):
    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    init_seed: int = 0


# ---------------------------------------------------------------- shaper
@dataclass
class ShaperConfig:
    name: str = "none"


# ---------------------------------------------------------------- algo
@dataclass
class AlgoConfig:
    name: str = MISSING
    lr: float = 1e-6
    loss: Loss = Loss.ppo_clip
    clip_ratio: float = 0.2
    kl_coef: float = 0.0  # weight of the low-variance KL to the frozen reference policy
    ppo_epochs: int = 1
    minibatch_size: int = 256  # step rows per optimizer step


@dataclass
class GRPOConfig(AlgoConfig):
    norm_adv: Norm = Norm.std
    eps: float = 1e-6


@dataclass
class RLOOConfig(AlgoConfig):
    pass


@dataclass
class ReinforcePPConfig(AlgoConfig):
    kl_beta: float = 0.01  # weight of the per-token KL penalty folded into the reward
    gamma: float = 1.0
    eps: float = 1e-6


@dataclass
class PPOConfig(AlgoConfig):
    gamma: float = 1.0
    lam: float = 0.95
    critic: Critic = Critic.separate
    critic_path: str | None = None  # checkpoint whose trunk initialises the critic (default: the policy's)
    critic_lr: float = 1e-5
    value_clip: float = 0.2  # clip of the value update around the rollout-time value
    critic_warmup_iters: int = 0  # iterations that train only the critic


@dataclass
class GiGPOConfig(AlgoConfig):
    anchor: Anchor = Anchor.exact
    similarity_threshold: float = 0.9
    norm_adv: Norm = Norm.std
    episode_stats: EpisodeStats = EpisodeStats.trajectory
    omega: float = 1.0  # weight of the step-level advantage
    gamma: float = 0.95  # discount of the step-level returns
    eps: float = 1e-6


# ---------------------------------------------------------------- rollout / learner / cluster / logger
@dataclass
class RolloutConfig:
    name: str = MISSING
    group_size: int = 8  # trajectories per task (GRPO group)
    num_groups: int = 16  # tasks per iteration
    temperature: float = 1.0
    eval_temperature: float = 0.0  # 0 = greedy
    max_new_tokens: int = 256
    generation_batch_size: int = 256  # prompts per generate() call


@dataclass
class LearnerConfig:
    name: str = MISSING
    micro_batch_size: int = 64  # rows per forward/backward (gradient accumulation inside a minibatch)
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0


@dataclass
class ClusterConfig:
    name: str = MISSING
    num_threads: int | None = None  # torch intra-op threads; None keeps torch's default


@dataclass
class LoggerConfig:
    name: str = MISSING
    table_every: int = 10  # console: print a metrics table every N iterations
    project: str = "calmrl"  # wandb
    entity: str | None = None
    mode: str | None = None  # wandb: online | offline; None = online iff WANDB_API_KEY is set


# ---------------------------------------------------------------- top level
@dataclass
class TrainerConfig:
    total_iters: int = 200
    eval_every: int = 10  # greedy evaluation on held-out seeds every N iterations (0 = only start/end)
    checkpoint_every: int = 5
    keep_last: int = 2
    drop_env_errors: bool = True  # leave trajectories whose env crashed out of the update


@dataclass
class TrainConfig:
    env: Any = MISSING
    policy: Any = MISSING
    shaper: Any = MISSING
    algo: Any = MISSING
    rollout: Any = MISSING
    learner: Any = MISSING
    cluster: Any = MISSING
    logger: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    run_name: str = MISSING
    resume: Resume = Resume.auto
    device: Device = Device.auto


@dataclass
class EvalConfig:
    env: Any = MISSING
    policy: Any = MISSING
    rollout: Any = MISSING
    cluster: Any = MISSING
    checkpoint: str | None = None  # a run directory, its checkpoints/ folder, or one step_XXXXXXXX directory
    seed: int = 0
    device: Device = Device.auto


@dataclass
class CompareConfig:
    runs: list[str] = field(default_factory=list)  # run directories, or sweep directories searched for runs
    metrics: list[str] = field(default_factory=lambda: ["eval/success_rate", "rollout/success_rate"])
    group_by: str = "algo.name"  # any dotted key of the runs' .hydra/config.yaml
    x: str = "env_steps"  # env_steps (cumulative perf/steps) | iter
    out: str | None = None  # output directory; None = the Hydra run directory (runs/compare/<time>)
    smooth: int = 1  # trailing moving-average window over each run's points (1 = none)


@dataclass
class InspectConfig(EvalConfig):
    estimators: list[str] = field(default_factory=lambda: ["grpo", "rloo", "gigpo"])
    group_size: int = 8  # trajectories in the inspected group
    task_seed: int | None = None  # the group's task seed; None = env.eval_seed_offset (a held-out task)
    algo_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. +algo_overrides.gigpo.omega=0.5


SCHEMAS: dict[str, dict[str, type]] = {
    "env": {"base": EnvConfig, "gridworld": GridWorldConfig},
    "policy": {"base": PolicyConfig, "tiny": TinyPolicyConfig},
    "shaper": {"base": ShaperConfig},
    "algo": {
        "base": AlgoConfig,
        "grpo": GRPOConfig,
        "rloo": RLOOConfig,
        "reinforce_pp": ReinforcePPConfig,
        "ppo": PPOConfig,
        "gigpo": GiGPOConfig,
    },
    "rollout": {"base": RolloutConfig},
    "learner": {"base": LearnerConfig},
    "cluster": {"base": ClusterConfig},
    "logger": {"base": LoggerConfig},
}


def register_schemas() -> None:
    """Put every schema in Hydra's ConfigStore under `schema/<group>/<name>`."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="train", node=TrainConfig)
    cs.store(group="schema", name="eval", node=EvalConfig)
    cs.store(group="schema", name="inspect", node=InspectConfig)
    cs.store(group="schema", name="compare", node=CompareConfig)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate_algo_extras(algo: DictConfig) -> None:
    """Ranges of the fields only some algorithms have."""
    for key in ("gamma", "lam"):
        if key in algo:
            _require(0.0 <= algo[key] <= 1.0, f"algo.{key} must be in [0, 1], got {algo[key]}")
    for key in ("omega", "kl_beta", "critic_warmup_iters"):
        if key in algo:
            _require(algo[key] >= 0, f"algo.{key} must be >= 0, got {algo[key]}")
    for key in ("critic_lr", "value_clip"):
        if key in algo:
            _require(algo[key] > 0, f"algo.{key} must be > 0, got {algo[key]}")
    if "similarity_threshold" in algo:
        t = algo.similarity_threshold
        _require(0.0 < t <= 1.0, f"algo.similarity_threshold must be in (0, 1], got {t}")
    if algo.get("critic_path"):
        from pathlib import Path

        _require(
            Path(algo.critic_path).expanduser().is_dir(), f"algo.critic_path={algo.critic_path} is not a directory"
        )


def validate(cfg: DictConfig) -> None:
    """Range and compatibility checks Hydra's types cannot express. Cheap: imports nothing heavy."""

    from calmrl.algos import ALGOS
    from calmrl.envs import ENVS
    from calmrl.shapers import SHAPERS

    ENVS.get(cfg.env.name)
    ALGOS.get(cfg.algo.name)
    SHAPERS.get(cfg.shaper.name)
    _require(cfg.rollout.name == "hf", f"rollout={cfg.rollout.name} is not available yet; use rollout=hf")
    _require(cfg.learner.name == "torch", f"learner={cfg.learner.name} is not available yet; use learner=torch")
    _require(cfg.cluster.name == "local", f"cluster={cfg.cluster.name} is not available yet; use cluster=local")

    _require(cfg.algo.lr > 0, f"algo.lr must be > 0, got {cfg.algo.lr}")
    _require(0 < cfg.algo.clip_ratio < 1, f"algo.clip_ratio must be in (0, 1), got {cfg.algo.clip_ratio}")
    _require(cfg.algo.kl_coef >= 0, f"algo.kl_coef must be >= 0, got {cfg.algo.kl_coef}")
    _require(cfg.algo.ppo_epochs >= 1, f"algo.ppo_epochs must be >= 1, got {cfg.algo.ppo_epochs}")
    _require(cfg.algo.minibatch_size >= 1, f"algo.minibatch_size must be >= 1, got {cfg.algo.minibatch_size}")
    _validate_algo_extras(cfg.algo)
    _require(
        cfg.rollout.group_size >= 2,
        f"rollout.group_size must be >= 2 for group baselines, got {cfg.rollout.group_size}",
    )
    _require(cfg.rollout.num_groups >= 1, f"rollout.num_groups must be >= 1, got {cfg.rollout.num_groups}")
    _require(cfg.rollout.temperature > 0, f"rollout.temperature must be > 0, got {cfg.rollout.temperature}")
    _require(
        cfg.rollout.eval_temperature >= 0,
        f"rollout.eval_temperature must be >= 0, got {cfg.rollout.eval_temperature}",
    )
    _require(
        cfg.rollout.max_new_tokens >= 1,
        f"rollout.max_new_tokens must be >= 1, got {cfg.rollout.max_new_tokens}",
    )
    _require(
        cfg.learner.micro_batch_size >= 1,
        f"learner.micro_batch_size must be >= 1, got {cfg.learner.micro_batch_size}",
    )
    _require(cfg.learner.max_grad_norm > 0, f"learner.max_grad_norm must be > 0, got {cfg.learner.max_grad_norm}")
    _require(cfg.env.max_steps >= 1, f"env.max_steps must be >= 1, got {cfg.env.max_steps}")
    _require(cfg.env.timeout_s > 0, f"env.timeout_s must be > 0, got {cfg.env.timeout_s}")
    _require(cfg.env.eval_episodes >= 1, f"env.eval_episodes must be >= 1, got {cfg.env.eval_episodes}")
    _require(
        cfg.policy.template.history_len >= 0,
        f"policy.template.history_len must be >= 0, got {cfg.policy.template.history_len}",
    )
    _require(cfg.trainer.total_iters >= 1, f"trainer.total_iters must be >= 1, got {cfg.trainer.total_iters}")
    _require(
        cfg.trainer.checkpoint_every >= 1,
        f"trainer.checkpoint_every must be >= 1, got {cfg.trainer.checkpoint_every}",
    )
    _require(cfg.trainer.keep_last >= 1, f"trainer.keep_last must be >= 1, got {cfg.trainer.keep_last}")
    _require(cfg.trainer.eval_every >= 0, f"trainer.eval_every must be >= 0, got {cfg.trainer.eval_every}")
    _require(cfg.logger.name in ("console", "wandb", "jsonl"), f"unknown logger {cfg.logger.name!r}")

    _validate_policy(cfg)
    _validate_device(cfg)


def validate_eval(cfg: DictConfig) -> None:
    """Checks for `calmrl eval`, before any model loads."""
    from calmrl.envs import ENVS

    ENVS.get(cfg.env.name)
    _require(cfg.rollout.name == "hf", f"rollout={cfg.rollout.name} is not available yet; use rollout=hf")
    _require(cfg.env.eval_episodes >= 1, f"env.eval_episodes must be >= 1, got {cfg.env.eval_episodes}")
    _require(
        cfg.rollout.eval_temperature >= 0, f"rollout.eval_temperature must be >= 0, got {cfg.rollout.eval_temperature}"
    )
    if cfg.checkpoint is None:
        _validate_policy(cfg)
    _validate_device(cfg)


def _validate_policy(cfg: DictConfig) -> None:
    from pathlib import Path

    if cfg.policy.path is not None:
        path = Path(cfg.policy.path).expanduser()
        _require(
            path.is_dir(),
            f"policy.path={cfg.policy.path} is not a directory; give a save_pretrained checkpoint directory",
        )
        _require(
            (path / "config.json").is_file(),
            f"policy.path={cfg.policy.path} has no config.json; is it a Hugging Face save_pretrained directory?",
        )
        _require(
            any(path.glob("*.safetensors")),
            f"policy.path={cfg.policy.path} has no weights (*.safetensors); download or save the model there first",
        )
    elif cfg.policy.name != "tiny":
        raise ConfigError(
            f"policy={cfg.policy.name} needs policy.path=/path/to/{cfg.policy.name} (a local save_pretrained directory)"
        )


def _validate_device(cfg: DictConfig) -> None:
    if cfg.device == "cuda":
        import torch

        _require(torch.cuda.is_available(), "device=cuda but no CUDA device is visible; use device=cpu or device=auto")
