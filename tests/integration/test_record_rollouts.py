"""`trainer.record_rollouts`: a run's recordings hold the batches its estimator saw (recomputing the advantages from a
recording gives the run's), and resuming re-records only what came after the checkpoint. That a cluster=ray run
records what cluster=local records is checked in test_scaleout.py, on its runs."""

from __future__ import annotations

import torch
from conftest import FAST, calmrl
from omegaconf import OmegaConf

from calmrl.algos import ALGOS
from calmrl.data import apply_penalty_rule, fold_shaping, penalty_rule
from calmrl.recording import load_batch, recorded_iterations

ARGS = [
    *FAST,
    "algo=gigpo",
    "trainer.checkpoint_every=1",
    "trainer.record_rollouts=1",
    "rollout.mismatch_every=1",  # so every recording carries the learner's own log-probs
    "cluster.num_threads=1",
]


def test_recordings_hold_what_the_estimator_saw_and_resume(workdir):
    calmrl("train", *ARGS, "trainer.total_iters=2", "run_name=rec", cwd=workdir)
    run = workdir / "runs" / "rec"
    files = recorded_iterations(run)
    assert list(files) == [1, 2]
    for it, path in files.items():
        batch, meta, extra = load_batch(path)
        assert meta["iteration"] == it and meta["policy_version"] == it - 1
        algo = OmegaConf.create(meta["config"]["algo"])
        method = ALGOS.get(algo.name)
        # the estimator's input is the recording after the method's own folding and penalty rule
        seen = apply_penalty_rule(fold_shaping(batch, method.reads_token_rewards), penalty_rule(algo))
        assert torch.equal(method(seen, algo), batch.advantages), it
        mask = batch.response_mask.bool()
        assert torch.allclose(extra["learner_logprobs"][mask], batch.old_logprobs[mask], atol=1e-4)
    before = {it: path.read_bytes() for it, path in files.items()}

    calmrl("train", *ARGS, "trainer.total_iters=3", "run_name=rec", cwd=workdir)  # resumes from iteration 2
    files = recorded_iterations(run)
    assert list(files) == [1, 2, 3]
    assert all(files[it].read_bytes() == before[it] for it in (1, 2))  # the first run's, kept
