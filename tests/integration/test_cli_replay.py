"""`calmrl replay` on a recorded run, as a user runs it: the table, CSV, plot and JSON, and the input errors."""

from __future__ import annotations

import csv
import json

from conftest import FAST, calmrl


def test_replay_of_a_recorded_run_writes_its_report_and_refuses_bad_input(workdir):
    calmrl(
        "train",
        *FAST,
        "trainer.total_iters=3",
        "trainer.record_rollouts=1",
        "rollout.mismatch_every=2",
        "run_name=rec",
        cwd=workdir,
    )
    run = workdir / "runs" / "rec"
    estimators = ["grpo", "rloo", "gigpo", "reinforce_pp"]  # reinforce_pp: the run's initial policy is its reference
    proc = calmrl("replay", f"run={run}", f"estimators=[{','.join(estimators)}]", "hydra.run.dir=replay", cwd=workdir)
    out = workdir / "replay"
    report = json.loads((out / "replay.json").read_text())
    assert report["batches"] == 3 and report["iterations"] == [1, 2, 3]
    assert "newest valid checkpoint" in report["weights"]
    # the run's own algo (grpo), recomputed from each recording, gives the advantages the run trained on
    assert [b["run_advantages_reproduced"] for b in report["batch_info"]] == [True, True, True]
    # iteration 2 recorded the learner's own log-probs (mismatch_every=2): its engine / learner gap is reported
    assert ["engine_learner_kl" in b for b in report["batch_info"]] == [False, True, False]
    assert report["batch_info"][1]["engine_learner_logprob_abs_diff"] < 1e-3  # the same weights, hf and torch
    assert list(report["estimators"]) == estimators
    for name in estimators:
        entry = report["estimators"][name]
        assert entry["gradient"]["grad_norm"]["n"] == 3 and entry["gradient"]["grad_norm"]["median"] > 0
        assert len(report["per_batch"][name]["snr"]) == 3
        assert entry["advantages"]["offmask_adv_abs_max"]["max"] == 0.0
        assert entry["mass_by_step"]
    assert abs(report["estimators"]["rloo"]["gradient"]["mean_grad_cos_reference"] - 1) < 1e-9  # rloo is the reference
    table = (out / "replay.md").read_text()
    assert all(f"| {name} |" in table for name in estimators)
    with (out / "replay.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["estimator"] for r in rows] == estimators
    assert (out / "replay.png").stat().st_size > 10_000
    assert "SNR" in proc.stderr + proc.stdout

    base = calmrl(
        "replay", f"run={run}", "checkpoint=base", "batches=1", "params=mlp", "hydra.run.dir=base", cwd=workdir
    )
    assert base.returncode == 0
    report = json.loads((workdir / "base" / "replay.json").read_text())
    assert report["iterations"] == [3] and "initial policy" in report["weights"]
    assert 0 < report["num_params"] < json.loads((out / "replay.json").read_text())["num_params"]
    # iteration 3 sampled from the weights after two updates; the initial policy needs importance weights
    assert report["batch_info"][0]["is_weight_mean"] != 1.0

    fresh = calmrl(
        "replay", f"run={run}", "fresh_batches=2", "reference_rollouts=6", "seed=5", "hydra.run.dir=fresh", cwd=workdir
    )
    assert fresh.returncode == 0
    report = json.loads((workdir / "fresh" / "replay.json").read_text())
    assert report["batches"] == 2 and report["source"].startswith("2 fresh batches (seed 5)")
    for info in report["batch_info"]:  # sampled at the replay weights: on-policy, no importance weights
        assert abs(info["is_weight_mean"] - 1) < 1e-3 and info["run_advantages_reproduced"] is None
        assert info["reference_rows"] > info["rows"]  # 6 trajectories per task against the run's 4
    assert "fresh trajectories per task" in report["reference_description"]

    for args, message in (
        (["estimators=[grpo,nope]"], "unknown algo 'nope'"),
        (["estimators=[archer]"], "cannot replay archer: archer keeps state across iterations"),
        (["batches=0"], "batches must be >= 1"),
        (["reference_rollouts=1"], "reference_rollouts must be 0"),
        (["params=no_such_layer"], "matches no trainable parameter"),
    ):
        bad = calmrl("replay", f"run={run}", *args, cwd=workdir, check=False)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    empty = workdir / "runs" / "empty"
    empty.mkdir()
    bad = calmrl("replay", f"run={empty}", cwd=workdir, check=False)
    assert bad.returncode == 2 and "trainer.record_rollouts=1" in bad.stderr, bad.stderr
