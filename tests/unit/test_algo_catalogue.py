"""Every `algo=` option is a whole method: its config file, a registered implementation, a schema, a unit test and
a docs page. Adding a method means adding all five; this test names whatever is missing."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from calmrl.algos import ALGOS
from calmrl.config import SCHEMAS
from calmrl.multiagent import MULTIAGENT_ALGOS

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = sorted(p.stem for p in (ROOT / "conf" / "algo").glob("*.yaml"))


def test_every_registered_algo_is_an_option():
    # calmrl's own: a test may register one of its own in this process (tests/reliability/test_nan_loss.py)
    shipped = {name for name in ALGOS.names() if ALGOS.get(name).advantages.__module__.startswith("calmrl.")}
    assert sorted({*shipped, *MULTIAGENT_ALGOS}) == OPTIONS


@pytest.mark.parametrize("name", OPTIONS)
def test_option_is_complete(name):
    cfg = OmegaConf.load(ROOT / "conf" / "algo" / f"{name}.yaml")
    assert cfg.name == name, f"conf/algo/{name}.yaml says name={cfg.name}"
    assert f"/schema/algo/{name}@_here_" in list(cfg.defaults), f"conf/algo/{name}.yaml does not build on its schema"
    assert name in SCHEMAS["algo"], f"no schema for algo={name} in calmrl.config.SCHEMAS"
    if name in MULTIAGENT_ALGOS:  # its agent class: calmrl/multiagent/<name>.py
        module = importlib.import_module(f"calmrl.multiagent.{name}")
    else:
        module = importlib.import_module(ALGOS.get(name).advantages.__module__)
    assert Path(module.__file__).is_file()
    assert (ROOT / "tests" / "unit" / "algos" / f"test_{name}.py").is_file(), f"no tests/unit/algos/test_{name}.py"
    doc = ROOT / "docs" / "algos" / f"{name}.md"
    assert doc.is_file(), f"no docs/algos/{name}.md"
    assert f"algo={name}" in doc.read_text(encoding="utf-8"), f"docs/algos/{name}.md never names algo={name}"
