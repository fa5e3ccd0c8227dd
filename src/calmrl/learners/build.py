"""The policy role hosted in the loop's own process: learner=torch, or learner=deepspeed as a world of one rank."""

from __future__ import annotations

from pathlib import Path

from calmrl.errors import ConfigError
from calmrl.learners.checkpoint import CheckpointManager, LearnerStateCheckpoints


def reference_and_critic_paths(algo_cfg, method, base_path) -> tuple[Path | None, Path | None]:
    """Where the policy role's reference and critic load from, None for one the run does not need: the reference
    (the initial policy) for a KL term or a method that reads ref_logprobs; the critic for a critic method, from
    algo.critic_path or else the policy's own trunk. The one rule for every host of the role (this process, a Ray
    learner rank)."""
    ref = Path(base_path) if algo_cfg.kl_coef > 0 or method.needs_ref else None
    critic = Path(algo_cfg.get("critic_path") or base_path).expanduser() if method.needs_critic else None
    return ref, critic


def build_local_learner(cfg, model, resume_from, checkpoints: CheckpointManager, ref_model=None, critic=None):
    """(learner, the checkpoint manager to save with) for `model` (trained in place). learner=deepspeed wraps it
    as one DeepSpeed rank, restores a resumed checkpoint's `deepspeed/` state, and its checkpoints carry that
    state too; a checkpoint written by the other learner is refused (resuming it would restart the optimizer)."""
    state_dir = resume_from.path / LearnerStateCheckpoints.STATE_DIR if resume_from is not None else None
    if state_dir is not None and state_dir.is_dir() != (cfg.learner.name == "deepspeed"):
        written_by = "learner=deepspeed" if state_dir.is_dir() else "learner=torch"
        raise ConfigError(
            f"{resume_from.path} was written by {written_by}: resume it with {written_by}, or pass "
            "run_name=<new> for a fresh run (nothing was overwritten)"
        )
    if cfg.learner.name != "deepspeed":
        from calmrl.learners.torch import TorchLearner

        return TorchLearner(model, cfg.algo, cfg.learner, ref_model=ref_model, critic=critic), checkpoints
    from calmrl.learners.deepspeed import single_rank_learner

    learner = single_rank_learner(model, cfg.algo, cfg.learner, ref_model=ref_model, critic=critic, state_dir=state_dir)
    return learner, LearnerStateCheckpoints(checkpoints.directory, cfg.trainer.keep_last, learner.save_state)
