"""The policy role hosted in the loop's own process: learner=torch, or learner=deepspeed as a world of one rank."""

from __future__ import annotations

from calmrl.errors import ConfigError
from calmrl.learners.checkpoint import CheckpointManager, LearnerStateCheckpoints


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
