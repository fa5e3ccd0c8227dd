"""ALFWorld end to end: two GiGPO iterations of the tiny policy on games written in the official layout
(tests/alfworld_games.py), each game in its own worker process, then `calmrl eval`; the paper preset
composes and bad data paths fail before any model loads."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import FAST, calmrl

MISSING = [m for m in ("alfworld", "textworld", "fast_downward") if importlib.util.find_spec(m) is None]
needs_extra = pytest.mark.skipif(
    bool(MISSING), reason=f"the alfworld extra is not installed ({', '.join(MISSING)}): pip install -e '.[alfworld]'"
)


@pytest.fixture(scope="module")
def games(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from alfworld_games import write_games
    finally:
        sys.path.pop(0)
    root = tmp_path_factory.mktemp("alfworld")
    write_games(root)
    return root


@needs_extra
def test_two_training_iterations_then_eval(workdir, games):
    args = [
        *FAST,
        "env=alfworld",
        f"env.data_path={games}",
        "env.eval_episodes=3",  # the three valid_seen games
        "algo=gigpo",
        "policy.max_new_tokens=8",  # "go to cabinet 1" is several tokens of the tiny tokenizer
        "trainer.total_iters=2",
        "run_name=alfworld",
    ]
    out = calmrl("train", *args, cwd=workdir, timeout=600)
    records = [json.loads(line) for line in (workdir / "runs" / "alfworld" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2]
    last = records[-1]
    assert last["perf/steps"] > 0 and "loss/policy" in last and "eval/success_rate" in last
    assert last["rollout/env_errors"] == 0  # every game loaded and stepped in its worker process
    assert "untrained" in out.stdout

    out = calmrl("eval", "checkpoint=runs/alfworld", cwd=workdir, timeout=600)
    report = json.loads(Path(out.stdout.strip().splitlines()[-1].removeprefix("report: ")).read_text())
    assert report["env"]["name"] == "alfworld" and report["episodes"] == 3
    # an episode whose env was stepped is labelled with its game's task type (format-invalid responses of
    # the untrained policy are caught before the env)
    categories = {e["category"] for e in report["per_episode"]} - {None}
    assert categories <= {"pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep"}


def test_paper_preset_composes(workdir):
    out = calmrl("train", "experiment=gigpo_alfworld_1.5b", "--cfg", "job", cwd=workdir)
    for line in (
        "name: alfworld",
        "max_steps: 50",
        "success_reward: 10.0",
        "eval_split: valid_seen",
        "name: qwen2.5-1.5b-instruct",
        "history_len: 2",
        "name: gigpo",
        "lr: 1.0e-06",
        "kl_coef: 0.01",
        "group_size: 8",
        "num_groups: 16",
        "dual_clip: 3.0",
        "penalty_rule: row",
        "temperature: 1.0",
        "eval_temperature: 0.4",
    ):
        assert line in out.stdout, line


def test_missing_data_fails_before_loading_anything(workdir, tmp_path, monkeypatch):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    out = calmrl("train", "env=alfworld", f"env.data_path={tmp_path / 'nope'}", cwd=workdir, check=False)
    assert out.returncode != 0 and "calmrl: error:" in out.stderr
    # with the extra: the data path is named; without it: the extra to install is
    assert ("env.data_path" in out.stderr) or ("pip install -e '.[alfworld]'" in out.stderr)
    assert not (workdir / "runs").exists() or not any((workdir / "runs").rglob("tiny_policy"))
