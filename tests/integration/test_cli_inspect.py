"""`calmrl inspect`: the credit view of one group, from the tiny default and from a trained run."""

import json

from conftest import FAST, calmrl


def _paths(out: str) -> dict[str, str]:
    return {
        k: v.strip()
        for k, _, v in (line.partition(": ") for line in out.splitlines())
        if k in ("html", "heatmap", "json")
    }


def test_inspect_a_run_writes_html_png_and_json(workdir):
    calmrl("train", *FAST, "trainer.total_iters=2", "run_name=ins", cwd=workdir)
    out = calmrl("inspect", "checkpoint=runs/ins", "group_size=3", "estimators=[grpo,gigpo,ppo]", cwd=workdir).stdout
    paths = _paths(out)
    assert set(paths) == {"html", "heatmap", "json"}
    report = json.loads(open(paths["json"]).read())
    steps = sum(len(t["steps"]) for t in report["trajectories"])
    html = open(paths["html"]).read()
    assert html.count("<tr") >= steps and "gigpo" in html and "grpo" in html
    assert "ppo skipped" in out  # needs a trained critic
    import matplotlib.image

    assert matplotlib.image.imread(paths["heatmap"]).size > 0


def test_inspect_rejects_unknown_estimator_and_tiny_groups(workdir):
    proc = calmrl("inspect", "estimators=[grpo,nope]", cwd=workdir, check=False)
    assert proc.returncode == 2 and "unknown algo 'nope'" in proc.stderr and "gigpo" in proc.stderr
    proc = calmrl("inspect", "group_size=1", cwd=workdir, check=False)
    assert proc.returncode == 2 and "group_size must be >= 2" in proc.stderr
