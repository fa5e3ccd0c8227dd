"""The embedded default learns: `calmrl train` with no overrides, as `make train` runs it. One run serves both
tests (the first 40 of its iterations are the small budget), so CI trains the default once."""

import json
import re

import pytest
from conftest import calmrl

SMALL_BUDGET = 40


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _mean(records, key):
    return sum(r[key] for r in records) / len(records)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """(stdout, metrics records, metrics path) of `calmrl train` with no overrides (about 4 minutes on 2 cores)."""
    workdir = tmp_path_factory.mktemp("default")
    out = calmrl("train", cwd=workdir, timeout=900).stdout  # a loaded CI machine can take several times that
    metrics = workdir / "runs" / "gridworld-grpo-seed0" / "metrics.jsonl"
    return out, _records(metrics), metrics


def test_small_budget_already_learns(default_run):
    """By iteration 40 the policy has learned the action format and starts reaching goals."""
    records = [r for r in default_run[1] if r["iter"] <= SMALL_BUDGET]
    assert [r["iter"] for r in records] == list(range(1, SMALL_BUDGET + 1))
    first, last = records[:3], records[-5:]
    assert _mean(first, "rollout/invalid_rate") > 0.8  # random init: almost no admissible action
    assert _mean(last, "rollout/invalid_rate") < 0.5 * _mean(first, "rollout/invalid_rate")
    assert _mean(last, "rollout/success_rate") > _mean(first, "rollout/success_rate") + 0.1
    assert _mean(last, "rollout/episode_return") > _mean(first, "rollout/episode_return") + 0.3


@pytest.mark.slow
def test_default_run_reaches_the_acceptance_threshold(default_run):
    """The full default run: held-out greedy success from ~0 to >= 0.6."""
    out, records, metrics = default_run
    match = re.search(r"greedy success on (\d+) held-out seeds: untrained ([\d.]+) -> trained ([\d.]+)", out)
    assert match, out[-2000:]
    untrained, trained = float(match.group(2)), float(match.group(3))
    assert untrained <= 0.2 and trained >= 0.6, (untrained, trained)
    assert f"metrics: {metrics}" in out
    assert round(records[-1]["eval/success_rate"], 3) == trained
