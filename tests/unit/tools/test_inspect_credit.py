"""`calmrl inspect`: one group rolled out, every estimator's credit per step and per token, HTML / PNG / JSON."""

from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from calmrl.algos import ALGOS
from calmrl.algos.reinforce_pp import reinforce_pp_advantages, reinforce_pp_token_rewards
from calmrl.data import apply_penalty_rule, build_batch, penalty_rule
from calmrl.registry import RegistryError
from calmrl.tools.inspect_credit import (
    algo_config,
    collect_group,
    credit_table,
    plan_estimators,
    print_summary,
    render_heatmap,
    render_html,
    run_inspect_command,
    step_advantages,
    summarize,
)

CONF = Path(__file__).resolve().parents[3] / "conf"
EST = ["grpo", "rloo", "gigpo", "reinforce_pp"]


def _group(group: str, name: str, schema: str | None = None):
    """conf/<group>/<name>.yaml over its schema's defaults (what Hydra composes)."""
    from calmrl.config import SCHEMAS

    cfg = OmegaConf.load(CONF / group / f"{name}.yaml")
    cfg.pop("defaults", None)
    if schema is not None:
        cfg = OmegaConf.merge(OmegaConf.structured(SCHEMAS[group][schema]), cfg)
    return cfg


def _algo_yaml(name: str):
    """The algo's shipped yaml, read independently of the module under test."""
    return _group("algo", name, schema=name)


def make_cfg(policy_dir, **overrides):
    """conf/inspect.yaml composed by hand (the InspectConfig schema lives in the CLI's config module)."""
    top = OmegaConf.load(CONF / "inspect.yaml")
    top.pop("defaults")
    top.pop("hydra")
    base = OmegaConf.create(
        {
            "env": _group("env", "gridworld", "gridworld"),
            "policy": _group("policy", "tiny", "tiny"),
            "rollout": _group("rollout", "hf", "base"),
            "cluster": _group("cluster", "local", "base"),
        }
    )
    cfg = OmegaConf.merge(base, top, {"policy": {"path": str(policy_dir)}, "env": {"max_steps": 6}})
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))


def test_inspect_yaml_fields():
    top = OmegaConf.load(CONF / "inspect.yaml")
    assert top.defaults[0] == "/schema/inspect@_here_"
    assert top.checkpoint is None and top.task_seed is None
    assert list(top.estimators) == ["grpo", "rloo", "gigpo"]
    assert top.group_size == 8 and top.seed == 0 and top.device == "auto"
    assert top.hydra.job.name == "inspect" and top.hydra.job.chdir is False


@pytest.fixture(scope="module")
def group(tiny_policy_dir, tmp_path_factory):
    cfg = make_cfg(tiny_policy_dir, group_size=5)
    batch, trajs, tok = collect_group(cfg, tiny_policy_dir, tmp_path_factory.mktemp("group"))
    return cfg, batch, trajs, tok


@pytest.fixture(scope="module")
def inspected(tiny_policy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect")
    cfg = make_cfg(tiny_policy_dir, group_size=6)
    cfg.estimators = EST + ["ppo"]
    return run_inspect_command(cfg, out), out


# ---------------------------------------------------------------- rollout and credit
def test_collect_group_is_one_task(group):
    cfg, batch, trajs, _ = group
    assert len(trajs) == 5
    assert {t.seed for t in trajs} == {cfg.env.eval_seed_offset}  # task_seed null -> first held-out seed
    assert {t.uid for t in trajs} == {0}
    assert len({t.task for t in trajs}) == 1
    assert len(batch) == sum(len(t.steps) for t in trajs)
    assert batch.uid.unique().tolist() == [0]
    # one group of one layout: every trajectory starts from the same state
    assert len({t.steps[0].anchor for t in trajs}) == 1


def test_collect_group_task_seed(tiny_policy_dir, tmp_path):
    cfg = make_cfg(tiny_policy_dir, group_size=2, task_seed=7)
    cfg.env.max_steps = 2
    _, trajs, _ = collect_group(cfg, tiny_policy_dir, tmp_path)
    assert [t.seed for t in trajs] == [7, 7]


def test_credit_table_matches_direct_calls(group):
    _, batch, _, _ = group
    table = credit_table(batch, EST)
    assert list(table) == EST
    for name in ("grpo", "rloo", "gigpo"):
        cfg = _algo_yaml(name)
        direct = ALGOS.get(name)(apply_penalty_rule(batch, penalty_rule(cfg)), cfg)  # as the trainer calls it
        assert table[name].shape == batch.input_ids.shape
        assert torch.equal(table[name], direct), name
    rpp = _algo_yaml("reinforce_pp")
    outcome = batch.episode_return - batch.penalty  # penalty_rule=row: an invalid row's outcome loses its penalty
    rewards = reinforce_pp_token_rewards(
        outcome, batch.old_logprobs, batch.old_logprobs, batch.response_mask, rpp.kl_beta
    )
    expected = reinforce_pp_advantages(rewards, batch.response_mask, rpp.gamma, rpp.eps)
    assert torch.allclose(table["reinforce_pp"], expected)
    assert batch.ref_logprobs is None  # the caller's batch is left as it was
    # zero outside the response tokens
    for adv in table.values():
        assert torch.all(adv[batch.response_mask == 0] == 0)


def test_algo_overrides(group):
    _, batch, _, _ = group
    table = credit_table(batch, ["gigpo"], {"gigpo": {"omega": 0.0}})
    cfg = _algo_yaml("gigpo")
    cfg.omega = 0.0
    assert torch.equal(table["gigpo"], ALGOS.get("gigpo")(batch, cfg))
    with pytest.raises(Exception, match="omgea"):
        algo_config("gigpo", {"omgea": 1.0})  # a typo is refused by the schema, not ignored


def test_grpo_credit_is_flat_inside_a_trajectory_and_gigpo_is_not(make_trajectory):
    # one group: trajectory 0 reaches the goal at its 3rd step; trajectory 1 revisits the start state
    a = make_trajectory(0, [0.0, 0.0, 1.0])
    b = make_trajectory(0, [0.0, 0.0, 0.0])
    b.steps[1].anchor = "s0"
    batch = build_batch([a, b], 0)
    table = credit_table(batch, ["grpo", "gigpo"])
    step_adv = {n: step_advantages(v, batch.response_mask) for n, v in table.items()}
    summary = summarize(batch, step_adv)["estimators"]
    assert summary["grpo"]["within_traj_std"] == pytest.approx(0.0)
    assert summary["gigpo"]["within_traj_std"] > 0.1
    assert summary["grpo"]["frac_positive"] == pytest.approx(0.5)
    assert step_adv["grpo"][:3].tolist() == pytest.approx([step_adv["grpo"][0].item()] * 3)


def test_plan_skips_critic_methods_and_notes_reference():
    run, skipped, notes = plan_estimators(["grpo", "ppo", "reinforce_pp", "grpo"])
    assert run == ["grpo", "reinforce_pp"]
    assert "ppo" in skipped and "critic" in skipped["ppo"]
    assert "KL" in notes["reinforce_pp"] and "0" in notes["reinforce_pp"]


def test_unknown_estimator_lists_known_algos(tiny_policy_dir, tmp_path):
    with pytest.raises(RegistryError, match=r"unknown algo 'nope'; known algos: .*gigpo.*grpo.*rloo"):
        credit_table(None, ["nope"])  # fails on the name, before the batch
    cfg = make_cfg(tiny_policy_dir, group_size=2)
    cfg.estimators = ["grpo", "nope"]
    with pytest.raises(RegistryError, match="known algos"):
        run_inspect_command(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any rollout or file


def test_only_critic_estimators_is_a_config_error(tiny_policy_dir, tmp_path):
    from calmrl.errors import ConfigError

    cfg = make_cfg(tiny_policy_dir)
    cfg.estimators = ["ppo"]
    with pytest.raises(ConfigError, match="critic"):
        run_inspect_command(cfg, tmp_path)


# ---------------------------------------------------------------- HTML
class _Collect(HTMLParser):
    """Step rows, and per step row its advantage cells and token spans: (estimator, value, (r, g, b))."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "tr" and a.get("class") == "step":
            self.rows.append({"cells": [], "tokens": []})
        if "data-value" in a and self.rows:
            rgb = tuple(int(x) for x in re.search(r"rgb\((\d+),(\d+),(\d+)\)", a["style"]).groups())
            item = (a["data-estimator"], float(a["data-value"]), rgb)
            self.rows[-1]["cells" if tag == "td" else "tokens"].append(item)


def _parse(page: str) -> _Collect:
    p = _Collect()
    p.feed(page)
    return p


def _assert_colour_sign(items):
    for name, value, (r, _, b) in items:
        if value > 1e-3:
            assert r > b, (name, value, r, b)  # red: positive
        elif value < -1e-3:
            assert b > r, (name, value, r, b)  # blue: negative
        elif value == 0:
            assert r == b == 255, (name, value, r, b)


def test_html_rows_values_colours_and_escaping(make_trajectory):
    good = make_trajectory(0, [0.0, 1.0], response_len=2)
    bad = make_trajectory(0, [0.0, 0.0, -0.1])
    evil = "<script>alert('x')</script>"
    bad.steps[1].response_text = evil
    bad.steps[1].action = None
    bad.steps[1].invalid = True
    bad.steps[2].anchor = evil
    trajs = [good, bad]
    batch = build_batch(trajs, 0)
    credits = credit_table(batch, ["grpo", "gigpo"])
    page = render_html(batch, trajs, credits, None, {"env": "gridworld", "task": evil, "notes": {}, "skipped": {}})

    parsed = _parse(page)
    assert parsed.scripts == 0
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert len(parsed.rows) == len(batch) == 5
    # page order = trajectory then step; each row has one cell per estimator, with that row's step advantage
    step_adv = {n: step_advantages(v, batch.response_mask) for n, v in credits.items()}
    for r, row in enumerate(parsed.rows):
        assert [c[0] for c in row["cells"]] == ["grpo", "gigpo"]
        for name, value, _ in row["cells"]:
            assert value == pytest.approx(step_adv[name][r].item())
        n_tokens = int(batch.response_mask[r].sum())
        assert len(row["tokens"]) == 2 * n_tokens
    # the successful trajectory gets positive grpo credit, the other negative, and the colours agree
    assert all(v > 0 for row in parsed.rows[:2] for n, v, _ in row["cells"] if n == "grpo")
    assert all(v < 0 for row in parsed.rows[2:] for n, v, _ in row["cells"] if n == "grpo")
    for row in parsed.rows:
        _assert_colour_sign(row["cells"])
        _assert_colour_sign(row["tokens"])
    for name in ("grpo", "gigpo"):
        assert f"<th>{name}</th>" in page
    assert "Legend" in page and "blue" in page and "red" in page
    assert "http" not in page  # self-contained: no external assets


# ---------------------------------------------------------------- the command
def test_command_writes_consistent_outputs(inspected, group):
    result, out = inspected
    report = result["report"]
    assert Path(result["html"]) == out / "credit.html"
    assert json.loads((out / "credit.json").read_text()) == report  # round-trips exactly

    assert report["estimators"] == EST
    assert "critic" in report["skipped"]["ppo"]
    assert "KL" in report["notes"]["reinforce_pp"]
    assert len(report["trajectories"]) == 6
    steps = [s for t in report["trajectories"] for s in t["steps"]]
    # grpo's defaults (the paper's): one member per trajectory, scoring its return with the penalties folded in
    scores = [t["return"] for t in report["trajectories"]]
    mean_score = sum(scores) / len(scores)
    for t in report["trajectories"]:
        for s in t["steps"]:
            for name in EST:
                tokens = s["token_advantages"][name]
                assert len(tokens) == len(s["tokens"]) == len(s["token_ids"]) >= 1
                assert s["advantage"][name] == pytest.approx(sum(tokens) / len(tokens), abs=1e-6)
            # grpo: the sign of each step's credit is the sign of its trajectory's return against the group's
            score = t["return"]
            if abs(score - mean_score) > 1e-6 and max(scores) - min(scores) > 1e-6:
                assert (s["advantage"]["grpo"] > 0) == (score > mean_score)

    page = (out / "credit.html").read_text()
    parsed = _parse(page)
    assert len(parsed.rows) == len(steps)
    for row, s in zip(parsed.rows, steps, strict=True):
        assert [c[0] for c in row["cells"]] == EST
        for name, value, _ in row["cells"]:
            assert value == pytest.approx(s["advantage"][name], abs=1e-6)
        _assert_colour_sign(row["cells"])
        _assert_colour_sign(row["tokens"])
    assert "ppo skipped" in page and "critic" in page

    summary = report["summary"]
    assert set(summary["estimators"]) == set(EST)
    for name in EST:
        assert summary["correlation"][name][name] in (None, pytest.approx(1.0))
        adv = [s["advantage"][name] for s in steps]
        assert summary["estimators"][name]["mean_abs"] == pytest.approx(sum(abs(a) for a in adv) / len(adv))
        tol = 1e-6 * max(1.0, max(abs(a) for a in adv))
        assert summary["estimators"][name]["frac_positive"] == pytest.approx(sum(a > tol for a in adv) / len(adv))
        assert summary["estimators"][name]["frac_negative"] == pytest.approx(sum(a < -tol for a in adv) / len(adv))


def test_heatmap_png(inspected, make_trajectory, tmp_path):
    import matplotlib.image as mpimg

    result, out = inspected
    image = mpimg.imread(out / "credit_heatmap.png")
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
    # more steps, taller figure: one row per step
    batch = build_batch([make_trajectory(0, [0.0] * 20), make_trajectory(0, [1.0] * 20)], 0)
    tall = mpimg.imread(render_heatmap(batch, credit_table(batch, ["grpo"]), tmp_path / "tall.png"))
    small = build_batch([make_trajectory(0, [0.0]), make_trajectory(0, [1.0])], 0)
    short = mpimg.imread(render_heatmap(small, credit_table(small, ["grpo"]), tmp_path / "short.png"))
    assert tall.shape[0] > short.shape[0]


def test_terminal_summary_prints_stats_and_skips(make_trajectory):
    from rich.console import Console

    batch = build_batch([make_trajectory(0, [0.0, 1.0]), make_trajectory(0, [0.0, 0.0])], 0)
    credits = credit_table(batch, ["grpo", "gigpo"])
    summary = summarize(batch, {n: step_advantages(v, batch.response_mask) for n, v in credits.items()})
    _, skipped, notes = plan_estimators(["grpo", "ppo", "reinforce_pp"])
    buf = io.StringIO()
    print_summary(summary, skipped, notes, Console(file=buf, width=160))
    text = buf.getvalue()
    for word in ("grpo", "gigpo", "mean |A|", "Pearson", "ppo skipped", "critic", "reinforce_pp"):
        assert word in text
