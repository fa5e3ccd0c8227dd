"""Acceptance: `calmrl train cluster=ray learner=deepspeed rollout=hf` on CPU (2 DeepSpeed ranks, ZeRO-2 and
ZeRO-3, a local Ray cluster) against `cluster=local learner=torch` on the same seed.

What lines up, and why the first iteration's rewards match exactly: the task seeds are a function of (seed,
iteration); both runs build the same tiny policy from policy.init_seed; the driver's torch RNG is the one sampling
stream, and with one rollout worker that worker samples from exactly the driver's state (cluster/ray.py), in the
same batch shapes, with the same torch thread count (cluster.num_threads=1 in both runs, so CPU matmuls reduce in
the same order). So the sampled tokens, and therefore rewards and advantages, are identical. The loss then comes
from 2 ranks summing their halves of the gradient instead of one process: equal to float rounding, stated
below. With 2 rollout workers, worker 1 samples from its own seed, so only the run's health is checked.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST, calmrl

from calmrl.recording import load_batch, recorded_iterations

pytest.importorskip("ray", reason="cluster=ray needs the `ray` extra")
pytest.importorskip("deepspeed", reason="learner=deepspeed needs the `deepspeed` extra")

# loss/policy is a mean of ~1e-1 terms that nearly cancel (GRPO advantages sum to zero per group): 2 ranks vs 1
# process change its rounding by ~1e-8. neg_logprob and grad_norm are O(1): 1e-5 relative is far above the
# rounding we see (~1e-7) and far below any real difference (one wrong token moves neg_logprob by ~1e-1).
LOSS_ABS = 1e-6
REL = 1e-5
# every iteration recorded (calmrl.recording), with the learner's own log-probs: a Ray run records what a local one does
RECORD = ["trainer.record_rollouts=1", "rollout.mismatch_every=1"]
ARGS = [*FAST, "trainer.total_iters=2", "trainer.checkpoint_every=1", "cluster.num_threads=1", *RECORD]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("local")
    calmrl("train", *ARGS, "run_name=local", cwd=cwd)
    return cwd / "runs" / "local"


@pytest.mark.parametrize("stage", [2, 3])
def test_ray_deepspeed_first_iteration_matches_local_torch(local_run, workdir, stage):
    calmrl(
        "train", *ARGS, "cluster=ray", "learner=deepspeed", f"learner.zero_stage={stage}", "run_name=ray", cwd=workdir
    )
    run = workdir / "runs" / "ray"
    ray_metrics = metrics(run)
    assert [m["iter"] for m in ray_metrics] == [1, 2]
    first, ref = ray_metrics[0], metrics(local_run)[0]
    for key in ("rollout/episode_return", "rollout/success_rate", "reward/step_mean", "rollout/invalid_rate",
                "rollout/response_tokens", "credit/adv_std", "perf/steps"):  # fmt: skip
        assert first[key] == ref[key], key  # the same sampled episodes
    assert first["loss/policy"] == pytest.approx(ref["loss/policy"], abs=LOSS_ABS)
    for key in ("loss/neg_logprob", "loss/grad_norm"):
        assert first[key] == pytest.approx(ref[key], rel=REL), key
    assert first["loss/optimizer_steps"] == 1 and first["perf/weight_sync_s"] > 0
    (got, _, got_extra), (want, _, want_extra) = (load_batch(recorded_iterations(r)[1]) for r in (run, local_run))
    for name, value in vars(want).items():  # the recorded batch: the same bytes, but for the ranks' log-probs
        if isinstance(value, torch.Tensor):
            assert torch.equal(getattr(got, name), value), name
    assert got.anchor_text == want.anchor_text
    assert torch.allclose(got_extra["learner_logprobs"], want_extra["learner_logprobs"], atol=1e-5)
    placement = (run / "train.log").read_text().split("Ray placement: ")[1].splitlines()[0]
    assert "rollout workers on" in placement and "reward worker" not in placement  # shaper=none: the driver's
    # the checkpoint: full weights loadable by transformers, and DeepSpeed's sharded state alongside
    ckpt = run / "checkpoints" / "step_00000002"
    assert (ckpt / "policy" / "model.safetensors").is_file()
    assert sorted(p.name for p in (ckpt / "deepspeed" / "state").glob("*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",  # one optimizer partition per rank
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(ckpt / "policy", use_safetensors=True)


def test_deepspeed_in_one_process_matches_local_torch_and_resumes(local_run, workdir):
    """learner=deepspeed without Ray: one DeepSpeed rank in the trainer's process, on the same sampling stream."""
    args = [*ARGS, "learner=deepspeed", "run_name=ds"]
    calmrl("train", *args, cwd=workdir)
    run = workdir / "runs" / "ds"
    first, ref = metrics(run)[0], metrics(local_run)[0]
    for key in ("rollout/episode_return", "rollout/success_rate", "rollout/response_tokens", "credit/adv_std"):
        assert first[key] == ref[key], key  # the same sampled episodes
    assert first["loss/policy"] == pytest.approx(ref["loss/policy"], abs=LOSS_ABS)
    for key in ("loss/neg_logprob", "loss/grad_norm"):
        assert first[key] == pytest.approx(ref[key], rel=REL), key
    ckpt = run / "checkpoints" / "step_00000002"
    assert [p.name for p in (ckpt / "deepspeed" / "state").glob("*_optim_states.pt")] == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    ]
    resumed = [a if not a.startswith("trainer.total_iters") else "trainer.total_iters=3" for a in args]
    proc = calmrl("train", *resumed, cwd=workdir)
    assert "resuming" in proc.stdout and "from iteration 2" in proc.stdout
    assert [m["iter"] for m in metrics(run)] == [1, 2, 3]
    # its optimizer state is DeepSpeed's: resuming it with learner=torch is refused, not silently restarted
    refused = calmrl("train", *[a for a in resumed if a != "learner=deepspeed"], cwd=workdir, check=False)
    assert refused.returncode == 2 and "was written by learner=deepspeed" in refused.stderr


def test_two_rollout_workers_run_and_resume(workdir):
    args = [*ARGS, "cluster=ray", "learner=deepspeed", "learner.zero_stage=3", "cluster.num_rollout_workers=2"]
    calmrl("train", *args, "run_name=w2", cwd=workdir)
    proc = calmrl("train", *[a for a in args if not a.startswith("trainer.total_iters")], "trainer.total_iters=3",
                  "run_name=w2", cwd=workdir)  # fmt: skip
    assert "resuming" in proc.stdout and "from iteration 2" in proc.stdout
    ms = metrics(workdir / "runs" / "w2")
    assert [m["iter"] for m in ms] == [1, 2, 3]
    for m in ms:
        assert m["loss/skipped_steps"] == 0 and m["perf/steps"] > 0 and m["cluster/worker_restarts"] == 0
