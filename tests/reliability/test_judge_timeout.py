"""A judge endpoint that hangs must not hang or end training: with on_error=zero the run finishes, every
failed prompt is answered "nothing achieved" and counted in `judge/failures`."""

from __future__ import annotations

import json

from reliability_support import FAST, calmrl

from calmrl.judges.local_server import LocalOpenAIServer, gridworld_answer


def test_train_finishes_against_a_hanging_judge_and_counts_failures(tmp_path):
    with LocalOpenAIServer(answer=gridworld_answer, hang=True) as server:
        # each request hangs for 600 s: a run that finishes within this call's timeout (below 600 s) has cut
        # every one of them short, so no wall-clock measurement (which would depend on the machine) is needed
        proc = calmrl(
            "train",
            "shaper=calm",
            "env.key=true",
            "trainer.total_iters=2",
            "run_name=hang",
            "shaper.judge.backend=openai",
            "shaper.judge.model=judge",
            f"shaper.judge.base_url={server.base_url}",
            "shaper.judge.timeout_s=0.3",
            "shaper.judge.max_retries=1",
            "shaper.judge.backoff_s=0.05",
            "shaper.judge.on_error=zero",
            *FAST,
            cwd=tmp_path,
            timeout=500,
        )
        requests = server.requests
    rows = [json.loads(line) for line in (tmp_path / "runs" / "hang" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2]
    # the judge never answered: the task decomposition failed each iteration (retried, since failures are
    # not cached), so no subgoal was known and no bonus was paid
    assert all(r["judge/failures"] >= 1 for r in rows)
    assert all(r["reward/step_bonus_mean"] == 0.0 for r in rows)
    assert requests == 2 * 2  # per iteration: one decomposition request, tried 1 + max_retries times
    assert "on_error=zero" in proc.stderr + proc.stdout  # the warning reached the user
