"""`calmrl compare`: a real sweep (2 algorithms x 2 seeds), an explicit list of runs, and the errors."""

import csv

import matplotlib.image
import pytest
from conftest import FAST, calmrl

METRICS = ["eval/success_rate", "rollout/success_rate"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """(workdir, sweep dir) of `calmrl train -m algo=grpo,gigpo seed=0,1` with an evaluation every iteration."""
    workdir = tmp_path_factory.mktemp("compare")
    fast = [o for o in FAST if not o.startswith("trainer.eval_every=")]
    calmrl(
        "train",
        "-m",
        "algo=grpo,gigpo",
        "seed=0,1",
        "trainer.total_iters=2",
        "trainer.eval_every=1",
        *fast,
        cwd=workdir,
    )
    (sweep_dir,) = (workdir / "runs" / "multirun").iterdir()
    return workdir, sweep_dir


def _paths(stdout: str, label: str):
    return [line.removeprefix(f"{label}: ") for line in stdout.splitlines() if line.startswith(f"{label}: ")]


def _check_png(path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not a blank canvas


def test_compare_a_sweep_grouped_by_algo(sweep):
    workdir, sweep_dir = sweep
    proc = calmrl("compare", f"runs=[{sweep_dir}]", "group_by=algo.name", cwd=workdir)
    out = proc.stdout
    assert "4 runs grouped by algo.name: gigpo (2), grpo (2)" in out
    plots = _paths(out, "plot")
    assert [p.rsplit("/", 1)[1] for p in plots] == ["eval_success_rate.png", "rollout_success_rate.png"]
    out_dir = (workdir / plots[0]).parent
    assert out_dir.parent == workdir / "runs" / "compare"  # the default output directory
    for plot in plots:
        _check_png(workdir / plot)
    md_path, csv_path = _paths(out, "summary")
    rows = list(csv.DictReader(open(workdir / csv_path)))
    assert sorted((r["group"], r["metric"], r["runs"], r["points"]) for r in rows) == sorted(
        (g, m, "2", "2") for g in ("gigpo", "grpo") for m in METRICS
    )
    for r in rows:
        assert 0 <= float(r["final_min"]) <= float(r["final_mean"]) <= float(r["final_max"]) <= 1
        assert float(r["final_x"]) > 0  # cumulative env steps
    md = open(workdir / md_path).read()
    table = [line for line in md.splitlines() if line.startswith("| gigpo") or line.startswith("| grpo")]
    assert len(table) == 4 and all(line.split("|")[3].strip() == "2" for line in table)
    assert table[0] in out  # the table is printed too


def test_compare_an_explicit_list_of_runs_into_out(sweep):
    workdir, sweep_dir = sweep
    (grpo,) = sweep_dir.glob("*-grpo-seed0")
    (gigpo,) = sweep_dir.glob("*-gigpo-seed0")
    proc = calmrl(
        "compare", f"runs=[{grpo},{gigpo}]", "metrics=[rollout/success_rate]", "x=iter", "out=cmp", cwd=workdir
    )
    assert "2 runs grouped by algo.name: gigpo (1), grpo (1)" in proc.stdout
    assert sorted(p.name for p in (workdir / "cmp").iterdir()) == [
        "rollout_success_rate.png",
        "summary.csv",
        "summary.md",
    ]
    _check_png(workdir / "cmp" / "rollout_success_rate.png")
    rows = list(csv.DictReader(open(workdir / "cmp" / "summary.csv")))
    assert [(r["group"], r["runs"], r["final_x"]) for r in rows] == [("gigpo", "1", "2.0"), ("grpo", "1", "2.0")]


def test_compare_errors_are_one_line(sweep):
    workdir, sweep_dir = sweep
    proc = calmrl("compare", f"runs=[{sweep_dir}]", "metrics=[eval/nope]", cwd=workdir, check=False)
    assert proc.returncode == 2 and "metric eval/nope is in no run; metrics there:" in proc.stderr
    assert "eval/success_rate" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = calmrl("compare", f"runs=[{sweep_dir}]", "group_by=algo.nam", cwd=workdir, check=False)
    assert proc.returncode == 2 and "group_by=algo.nam is not a key" in proc.stderr and "algo.name" in proc.stderr
    proc = calmrl("compare", cwd=workdir, check=False)
    assert proc.returncode == 2 and "needs runs=" in proc.stderr
    (workdir / "empty" / "sub").mkdir(parents=True, exist_ok=True)
    proc = calmrl("compare", "runs=[empty]", cwd=workdir, check=False)
    assert proc.returncode == 2 and "no run under empty" in proc.stderr
