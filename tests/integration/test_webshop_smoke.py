"""WebShop end to end: two GiGPO iterations of the tiny policy on the shipped catalogue, then `calmrl eval`,
and the paper preset composes."""

import json
from pathlib import Path

from conftest import FAST, calmrl

DATA = Path(__file__).resolve().parents[1] / "data" / "webshop"
WEBSHOP = [
    "env=webshop",
    f"env.data_dir={DATA}",
    "env.eval_goals=6",
    "algo=gigpo",
    "policy.max_new_tokens=6",  # an action is a few words of the tiny tokenizer: search[...] / click[...]
]


def test_two_training_iterations_then_eval(workdir):
    out = calmrl("train", *FAST, *WEBSHOP, "trainer.total_iters=2", "run_name=webshop", cwd=workdir)
    run = workdir / "runs" / "webshop"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2]
    last = records[-1]
    assert last["perf/steps"] > 0 and "loss/policy" in last and "eval/success_rate" in last
    assert 0.0 <= last["rollout/invalid_rate"] <= 1.0
    assert "untrained" in out.stdout

    out = calmrl("eval", "checkpoint=runs/webshop", cwd=workdir)
    report = json.loads(Path(out.stdout.strip().splitlines()[-1].removeprefix("report: ")).read_text())
    assert report["env"]["name"] == "webshop" and report["episodes"] == 4
    # an episode whose env was stepped is labelled with its goal's product category (an untrained policy's
    # episodes may never reach the env: format-invalid responses are caught before it)
    categories = {e["category"] for e in report["per_episode"]} - {None}
    assert categories <= {"beauty", "electronics", "fashion", "food", "furniture"}


def test_paper_preset_composes(workdir):
    out = calmrl("train", "experiment=gigpo_webshop_1.5b", "--cfg", "job", cwd=workdir)
    for line in (
        "name: webshop",
        "max_steps: 15",
        "name: qwen2.5-1.5b-instruct",
        "history_len: 2",
        "name: gigpo",
        "lr: 1.0e-06",
        "kl_coef: 0.01",
        "group_size: 8",
        "num_groups: 6",  # run_webshop.sh: data.train_batch_size=6
        "norm_adv: mean",  # gigpo.mode=mean_norm
        "penalty_rule: row",
        "temperature: 1.0",
        "eval_temperature: 0.4",
    ):
        assert line in out.stdout, line


def test_missing_data_dir_fails_before_loading_anything(workdir):
    out = calmrl("train", "env=webshop", cwd=workdir, check=False)
    assert out.returncode != 0 and "env.data_dir" in out.stderr and "docs/envs/webshop.md" in out.stderr
    assert not (workdir / "runs").exists() or not any((workdir / "runs").rglob("tiny_policy"))
