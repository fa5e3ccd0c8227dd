"""calmrl.tools.compare: loading, grouping, alignment and statistics, checked against hand-computed numbers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from calmrl.errors import ConfigError
from calmrl.tools.compare import (
    aggregate,
    compare,
    group_runs,
    load_runs,
    moving_average,
    run_compare_command,
    run_curve,
    summary_rows,
)


def make_run(root, name, algo, seed, rollout, steps, evals=None, config=True, torn=False, size=5):
    """A run directory: metrics.jsonl with one record per iteration (1..len(rollout)) and .hydra/config.yaml.
    `evals` maps iteration -> eval/success_rate (only those iterations log it)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    lines = []
    for i, (r, s) in enumerate(zip(rollout, steps, strict=True), start=1):
        record = {"iter": i, "rollout/success_rate": r, "perf/steps": float(s)}
        if evals and i in evals:
            record["eval/success_rate"] = evals[i]
        lines.append(json.dumps(record))
    text = "\n".join(lines) + "\n"
    if torn:
        text += '{"iter": 99, "rollout/succ'
    (run / "metrics.jsonl").write_text(text)
    if config:
        cfg = {"algo": {"name": algo, "lr": 1e-6}, "env": {"name": "gridworld", "size": size}, "seed": seed}
        cfg["trainer"] = {"total_iters": len(rollout)}
        (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return run


@pytest.fixture()
def sweep(tmp_path):
    """A sweep directory with 2 grpo runs and 1 gigpo run (seeds 0, 1 / 0)."""
    root = tmp_path / "multirun" / "2025-01-01_00-00-00"
    make_run(root, "0-grpo-seed0", "grpo", 0, [0.0, 0.5, 1.0], [10, 20, 30], evals={2: 0.25, 3: 0.75})
    make_run(root, "1-grpo-seed1", "grpo", 1, [0.2, 0.3, 0.4], [10, 10, 10], evals={2: 0.5, 3: 0.25}, torn=True)
    make_run(root, "2-gigpo-seed0", "gigpo", 0, [1.0, 1.0, 1.0], [5, 5, 5], evals={3: 1.0})
    return root


def test_load_runs_finds_the_runs_of_a_sweep_and_skips_a_torn_line(sweep):
    runs = load_runs([sweep, sweep / "0-grpo-seed0"])  # a run named twice is loaded once
    assert sorted(r.path.name for r in runs) == ["0-grpo-seed0", "1-grpo-seed1", "2-gigpo-seed0"]
    torn = next(r for r in runs if r.path.name == "1-grpo-seed1")
    assert [r["iter"] for r in torn.records] == [1, 2, 3]
    assert torn.config.algo.name == "grpo"


def test_group_by_algo_name_by_a_section_and_by_seed(sweep, tmp_path):
    runs = load_runs([sweep])
    groups = group_runs(runs, "algo.name")
    assert {k: [r.path.name for r in v] for k, v in groups.items()} == {
        "gigpo": ["2-gigpo-seed0"],
        "grpo": ["0-grpo-seed0", "1-grpo-seed1"],
    }
    assert list(group_runs(runs, "algo")) == ["gigpo", "grpo"]  # a config section stands for its name
    by_seed = group_runs(runs, "seed")
    assert {k: sorted(r.path.name for r in v) for k, v in by_seed.items()} == {
        "0": ["0-grpo-seed0", "2-gigpo-seed0"],
        "1": ["1-grpo-seed1"],
    }
    # numeric values sort numerically, not as text
    make_run(tmp_path / "s", "a", "grpo", 10, [0.0], [1])
    make_run(tmp_path / "s", "b", "grpo", 2, [0.0], [1])
    assert list(group_runs(load_runs([tmp_path / "s"]), "seed")) == ["2", "10"]


def test_env_steps_are_the_cumulative_sum_of_perf_steps(sweep):
    run = load_runs([sweep / "0-grpo-seed0"])[0]
    c = run_curve(run, "rollout/success_rate", "env_steps")
    assert c.iters.tolist() == [1, 2, 3] and c.x.tolist() == [10, 30, 60] and c.y.tolist() == [0.0, 0.5, 1.0]
    assert run_curve(run, "rollout/success_rate", "iter").x.tolist() == [1, 2, 3]
    # eval is logged only on iterations 2 and 3; its x still counts the steps of iteration 1
    e = run_curve(run, "eval/success_rate", "env_steps")
    assert e.iters.tolist() == [2, 3] and e.x.tolist() == [30, 60] and e.y.tolist() == [0.25, 0.75]
    assert run_curve(run, "loss/policy") is None


def test_aggregate_mean_min_max_std_at_each_point(sweep):
    runs = group_runs(load_runs([sweep]), "algo.name")["grpo"]
    agg = aggregate([run_curve(r, "rollout/success_rate") for r in runs])
    # seed0: x 10, 30, 60 / y 0, .5, 1;  seed1: x 10, 20, 30 / y .2, .3, .4
    np.testing.assert_allclose(agg["x"], [10, 25, 45])
    np.testing.assert_allclose(agg["mean"], [0.1, 0.4, 0.7])
    np.testing.assert_allclose(agg["min"], [0.0, 0.3, 0.4])
    np.testing.assert_allclose(agg["max"], [0.2, 0.5, 1.0])
    np.testing.assert_allclose(agg["std"], [0.1, 0.1, 0.3])  # over runs, ddof=0
    assert agg["iter"].tolist() == [1, 2, 3] and agg["runs"].tolist() == [2, 2, 2]

    ev = aggregate([run_curve(r, "eval/success_rate") for r in runs])
    assert ev["iter"].tolist() == [2, 3]
    np.testing.assert_allclose(ev["x"], [25, 45])
    np.testing.assert_allclose(ev["mean"], [0.375, 0.5])
    np.testing.assert_allclose(ev["std"], [0.125, 0.25])
    np.testing.assert_allclose(ev["min"], [0.25, 0.25])
    np.testing.assert_allclose(ev["max"], [0.5, 0.75])


def test_smoothing_is_a_trailing_moving_average(sweep):
    np.testing.assert_allclose(moving_average(np.array([0.0, 0.5, 1.0, 0.0]), 2), [0.0, 0.25, 0.75, 0.5])
    np.testing.assert_allclose(moving_average(np.array([0.0, 0.5, 1.0, 0.0]), 3), [0.0, 0.25, 0.5, 0.5])
    np.testing.assert_allclose(moving_average(np.array([0.3, 0.6]), 1), [0.3, 0.6])
    run = load_runs([sweep / "0-grpo-seed0"])[0]
    np.testing.assert_allclose(run_curve(run, "rollout/success_rate", smooth=2).y, [0.0, 0.25, 0.75])
    runs = group_runs(load_runs([sweep]), "algo.name")["grpo"]
    agg = aggregate([run_curve(r, "rollout/success_rate", smooth=2) for r in runs])
    # seed1 smoothed: .2, .25, .35  -> mean with seed0's 0, .25, .75
    np.testing.assert_allclose(agg["mean"], [0.1, 0.25, 0.55])


def test_unequal_iterations_use_the_common_ones_and_say_so(tmp_path):
    make_run(tmp_path, "a", "grpo", 0, [0.0, 0.5, 1.0], [10, 10, 10])
    make_run(tmp_path, "b", "grpo", 1, [0.2, 0.4], [10, 10])  # stopped after 2 iterations
    result = compare(load_runs([tmp_path]), ["rollout/success_rate"], "algo.name", "iter")
    agg = result.results["rollout/success_rate"]["grpo"]
    assert agg["iter"].tolist() == [1, 2]
    np.testing.assert_allclose(agg["mean"], [0.1, 0.45])
    assert any("different iterations" in n and "2 they have in common" in n for n in result.notes)


def test_summary_rows_final_best_and_auc(sweep):
    result = compare(load_runs([sweep]), ["eval/success_rate", "rollout/success_rate"], "algo.name", "env_steps")
    assert result.notes == []
    rows = {(r["group"], r["metric"]): r for r in summary_rows(result.results)}
    assert [(r["group"], r["metric"]) for r in summary_rows(result.results)][:2] == [
        ("gigpo", "eval/success_rate"),
        ("grpo", "eval/success_rate"),
    ]
    ev = rows["grpo", "eval/success_rate"]
    assert ev["runs"] == 2 and ev["points"] == 2 and ev["final_x"] == 45
    assert ev["final_mean"] == pytest.approx(0.5) and ev["final_std"] == pytest.approx(0.25)
    assert (ev["final_min"], ev["final_max"]) == (0.25, 0.75)
    assert ev["best_mean"] == pytest.approx(0.5) and ev["best_x"] == 45
    assert ev["auc"] == pytest.approx((0.375 + 0.5) / 2)  # trapezoid over x 25..45, divided by 20
    ro = rows["grpo", "rollout/success_rate"]
    assert ro["auc"] == pytest.approx(((0.1 + 0.4) / 2 * 15 + (0.4 + 0.7) / 2 * 20) / 35)
    assert ro["best_mean"] == pytest.approx(0.7) and ro["best_x"] == 45
    one = rows["gigpo", "eval/success_rate"]  # a single point: AUC is its value
    assert one["runs"] == 1 and one["final_std"] == 0 and one["auc"] == 1.0 and one["final_x"] == 15


def test_errors(sweep, tmp_path):
    runs = load_runs([sweep])
    with pytest.raises(ConfigError, match=r"metric nope/x is in no run; metrics there: .*rollout/success_rate"):
        compare(runs, ["rollout/success_rate", "nope/x"])
    with pytest.raises(ConfigError, match=r"group_by=algo.nme is not a key of .*keys there include: .*algo.name"):
        compare(runs, ["rollout/success_rate"], group_by="algo.nme")
    with pytest.raises(ConfigError, match="group_by=trainer is a config section, not a value; .*trainer.total_iters"):
        group_runs(runs, "trainer")  # a section without a name
    with pytest.raises(ConfigError, match="needs runs="):
        load_runs([])
    (tmp_path / "empty" / "deep").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no run under"):
        load_runs([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="is not a directory"):
        load_runs([tmp_path / "nowhere"])
    with pytest.raises(ConfigError, match="x=steps is not an x axis"):
        compare(runs, ["rollout/success_rate"], x="steps")
    with pytest.raises(ConfigError, match="smooth must be >= 1"):
        compare(runs, ["rollout/success_rate"], smooth=0)
    make_run(tmp_path / "nocfg", "r", "grpo", 0, [0.0], [1], config=False)
    with pytest.raises(ConfigError, match="has no .hydra/config.yaml"):
        compare(load_runs([tmp_path / "nocfg"]), ["rollout/success_rate"])


def test_run_compare_command_writes_plots_and_tables(sweep, tmp_path, capsys):
    cfg = OmegaConf.create(
        {
            "runs": [str(sweep)],
            "metrics": ["eval/success_rate", "rollout/success_rate"],
            "group_by": "algo.name",
            "x": "env_steps",
            "out": str(tmp_path / "out"),
            "smooth": 1,
        }
    )
    report = run_compare_command(cfg, tmp_path / "unused")
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {
        "eval_success_rate.png",
        "rollout_success_rate.png",
        "summary.md",
        "summary.csv",
    }
    assert (out / "eval_success_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4 and float(rows[1]["final_mean"]) == pytest.approx(0.5)
    md = (out / "summary.md").read_text()
    assert "| grpo | `eval/success_rate` | 2 | 0.5 ± 0.25 |" in md
    printed = capsys.readouterr().out
    assert "3 runs grouped by algo.name: gigpo (1), grpo (2)" in printed and f"summary: {out / 'summary.md'}" in printed
    assert len(report["rows"]) == 4
