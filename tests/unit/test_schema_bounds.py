"""Ranges written on the schema fields (schemas/bounds.py), and the yamls of the groups whose schemas live in
calmrl/schemas/ against those schemas."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from calmrl.cli import CONFIG_DIR
from calmrl.errors import ConfigError
from calmrl.schemas.algo import validate_algo
from calmrl.schemas.bounds import Bounds, bounded, check_bounds, field_bounds

ALGOS = sorted(p.stem for p in (Path(CONFIG_DIR) / "algo").glob("*.yaml"))


# brpo's budget is the run's rollout.max_new_tokens, 1 for the gridworld's tiny policy: not a multiple of its 4
# budgets, which is a rule between two fields (tests/integration/test_pure_brpo_smoke.py), not a range
VALID = {("algo", "brpo"): ["algo.budget=8"]}


@pytest.mark.parametrize(
    "bounds, text, inside, outside",
    [
        (Bounds(ge=0, le=1), "in [0, 1]", [0, 0.5, 1], [-0.1, 1.1]),
        (Bounds(gt=0, lt=1), "in (0, 1)", [0.2], [0, 1]),
        (Bounds(gt=0, le=1), "in (0, 1]", [1], [0]),
        (Bounds(ge=1), ">= 1", [1, 10**6], [0]),
        (Bounds(gt=0), "> 0", [1e-12], [0, -1]),
        (Bounds(le=2.5), "<= 2.5", [2.5], [2.6]),
        (Bounds(gt=1, hint="(verl uses 3.0)"), "> 1 (verl uses 3.0)", [3.0], [1.0]),
    ],
)
def test_bounds_say_their_range_and_hold_inside_it(bounds, text, inside, outside):
    assert str(bounds) == text
    assert all(bounds.holds(v) for v in inside) and not any(bounds.holds(v) for v in outside)


def test_bounded_needs_a_bound():
    with pytest.raises(ValueError, match="at least one"):
        bounded(1.0)


def _just_outside(b: Bounds, integer: bool):
    step = 1 if integer else 1e-3
    if b.ge is not None:
        return b.ge - step
    if b.gt is not None:
        return b.gt
    return b.le + step if b.le is not None else b.lt


#: the `calmrl train` groups (their schemas live in calmrl/schemas/; decode is `calmrl eval`'s)
GROUPS = ("algo", "rollout", "learner", "cluster", "logger", "env", "policy", "shaper")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONFIG_DIR) / g).glob("*.yaml"))]


@functools.cache
def _composed_option(group: str, name: str):
    over = [f"{group}={name}"] + (["learner=deepspeed"] if (group, name) == ("cluster", "ray") else [])
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["run_name=t", *over, *VALID.get((group, name), [])])


def compose_group(group: str, name: str):
    return copy.deepcopy(_composed_option(group, name))[group]


def check(group: str, node) -> None:
    """What validate() runs on the group's node: validate_algo for algo (ranges and the rules between fields),
    the ranges for the others."""
    validate_algo(node) if group == "algo" else check_bounds(node, group)


CASES = []
for _group, _name in OPTIONS:
    _schema = OmegaConf.get_type(compose_group(_group, _name))
    _types = {f.name: f.type for f in dataclasses.fields(_schema)}
    CASES += [(_group, _name, key, b, "int" in str(_types[key])) for key, b in field_bounds(_schema).items()]


@pytest.mark.parametrize("group, name, key, bounds, integer", CASES, ids=[f"{c[0]}={c[1]}.{c[2]}" for c in CASES])
def test_every_bounded_field_is_refused_just_outside_its_range(group, name, key, bounds, integer):
    cfg = compose_group(group, name)
    check(group, cfg)  # the composed defaults are inside every range
    with open_dict(cfg):
        cfg[key] = _just_outside(bounds, integer)
    with pytest.raises(ConfigError, match=rf"^{group}\.{key} must be "):
        check(group, cfg)


def test_every_algo_has_bounded_fields():
    assert {c[1] for c in CASES if c[0] == "algo"} == set(ALGOS)


@pytest.mark.parametrize("group, name", OPTIONS, ids=[f"{g}={n}" for g, n in OPTIONS])
def test_yaml_sets_only_what_differs_from_its_schema(group, name):
    """A yaml that restates a schema default makes two places to change (they drifted before: lr 1e-6 in the
    schema, 1e-3 in every algo yaml, with nothing to say which one a run used)."""
    raw = OmegaConf.load(Path(CONFIG_DIR) / group / f"{name}.yaml")
    schema = OmegaConf.get_type(compose_group(group, name))
    defaults = {f.name: f.default for f in dataclasses.fields(schema) if f.default is not dataclasses.MISSING}
    restated = [
        key
        for key in raw
        if key not in ("defaults", "name") and key in defaults and raw._get_node(key)._value() == defaults[key]
    ]
    assert restated == [], f"conf/{group}/{name}.yaml restates the defaults of {schema.__name__}: {restated}"
