"""env=minihack on MiniHack-KeyRoom-S5-v0: a known action sequence on a fixed seed, text, anchors, bad actions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from calmrl.envs.minihack import MiniHack


def _extra_problem() -> str | None:
    try:  # minihack imports pkg_resources (setuptools < 81): a broken install is a reason to skip, too
        import minihack  # noqa: F401
        import nle  # noqa: F401
    except ImportError as exc:
        return f"the minihack extra is not installed or broken ({exc}): pip install -e '.[minihack]'"
    return None


needs_extra = pytest.mark.skipif(_extra_problem() is not None, reason=_extra_problem() or "")

KEYROOM = "MiniHack-KeyRoom-S5-v0"
# Seed 0 lays out the key one step south-west of the agent and the locked room to the north-east.
SOLUTION_SEED_0 = "southwest pickup east east northeast north north apply west west west".split()


@pytest.fixture()
def env():
    return MiniHack(KEYROOM)


@needs_extra
def test_known_sequence_solves_keyroom(env):
    obs = env.reset(0)
    assert obs.admissible == (
        "north",
        "east",
        "south",
        "west",
        "northeast",
        "southeast",
        "southwest",
        "northwest",
        "pickup",
        "apply",
    )
    assert "key" not in obs.text.split("inventory:")[1]
    for k, action in enumerate(SOLUTION_SEED_0):
        result = env.step(action)
        assert result.info["category"] == KEYROOM and not result.info.get("invalid")
        if action == "pickup":
            assert "Master Key of Thievery" in result.observation.text.split("inventory:")[1]
        if k < len(SOLUTION_SEED_0) - 1:
            assert (result.reward, result.done) == (0.0, False), (k, action)
    assert (result.reward, result.done, result.info["success"]) == (1.0, True, True)
    assert result.info["end_status"] == "task_successful"


@needs_extra
def test_observation_text_and_anchor(env):
    obs = env.reset(0)
    lines = obs.text.split("\n")
    assert lines[0] == "map:" and len(lines) == 1 + 9 + 2
    assert lines[1 + 4][4] == "@"  # the agent sits in the middle of the 9 x 9 crop
    assert lines[1 + 5][3] == "("  # ... with the key to its south-west
    # with the moon phase fixed, seed 0 names a new-moon game (NLE derives the phase from the seed), whatever
    # the date the test runs on
    assert lines[-2] == "message: Be careful!  New moon tonight."
    assert lines[-1].startswith("inventory: a: a +0 short sword (weapon in hand); ")
    # the anchor is the raw glyph crop: 9 rows of 9 glyph ids
    rows = obs.anchor.split("\n")
    assert len(rows) == 9 and all(len(r.split()) == 9 for r in rows)
    assert all(word.isdigit() for r in rows for word in r.split())


# Plays seeds 0-3 of KeyRoom-S5 (the seed-0 solution, then a few moves) and prints every observation and reward.
PLAY = f"""
import json, sys
from calmrl.envs.minihack import MiniHack
env = MiniHack({KEYROOM!r}, real_clock=sys.argv[1] == "real")
games = []
for seed in range(4):
    obs = env.reset(seed)
    game = [[obs.text, obs.anchor]]
    for action in {SOLUTION_SEED_0!r}:
        result = env.step(action)
        game.append([result.observation.text, result.observation.anchor, result.reward, result.done])
        if result.done:
            break
    games.append(game)
print(json.dumps(games))
"""
# a full moon at midnight, a new moon at noon, a Friday the 13th at night: each changes NetHack's start
CLOCKS = ("2026-11-24 00:30:00", "2026-12-09 12:00:00", "2026-11-13 23:00:00")


def _play_at(clock: str, mode: str) -> list:
    proc = subprocess.run(
        ["faketime", clock, sys.executable, "-c", PLAY, mode], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@needs_extra
@pytest.mark.skipif(shutil.which("faketime") is None, reason="needs Debian's faketime (apt-get install faketime)")
def test_seed_names_one_game_on_any_date():
    fixed = [_play_at(clock, "fixed") for clock in CLOCKS]
    assert fixed[0] == fixed[1] == fixed[2]  # observations, anchors, rewards and ends: all the seed's
    assert fixed[0][0][-1][2:] == [1.0, True]  # and seed 0 is still solved by its sequence
    # the control: following the real clock, the shifted dates do change the game, so faketime took effect
    real = [_play_at(clock, "real") for clock in CLOCKS]
    assert "Full moon tonight" in real[0][0][0][0] and "New moon tonight" in real[1][0][0][0]
    assert "Friday the 13th" in real[2][0][0][0]
    assert real[0] != real[1] != real[2]


@needs_extra
def test_seed_names_the_level(env):
    other = MiniHack(KEYROOM)
    a, b = env.reset(0), other.reset(0)
    assert a == b
    assert env.step("east").observation == other.step("east").observation
    assert env.reset(1).anchor != a.anchor  # another seed, another level
    assert env.reset(0) == a  # and back


@needs_extra
def test_bad_word_is_invalid_and_takes_no_game_time(env):
    first = env.reset(0)
    result = env.step("dance")
    assert result.info == {"category": KEYROOM, "invalid": True}
    assert (result.reward, result.done) == (0.0, False) and result.observation == first
    # a legal move into a wall is valid: the game answers it
    env.reset(0)
    assert not env.step("north").info.get("invalid")


@needs_extra
def test_max_steps_truncates_and_step_after_end_raises():
    env = MiniHack(KEYROOM, max_steps=3)
    env.reset(0)
    assert not env.step("east").done and not env.step("west").done
    result = env.step("east")
    assert result.done and result.info["truncated"] and result.info["success"] is False
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("east")


@needs_extra
def test_vocabulary_makes_each_action_one_token(env):
    from calmrl.policy import PromptTemplate
    from calmrl.policy.tiny import build_tokenizer

    tok = build_tokenizer(MiniHack.vocabulary() + PromptTemplate.vocabulary())
    obs = env.reset(0)
    prompt = PromptTemplate().build(env.task, [], obs)
    ids = tok(prompt)["input_ids"]
    assert tok.eos_token_id not in ids and tok.decode(ids) == prompt  # every character is representable
    for word in obs.admissible:
        assert len(tok(" " + word)["input_ids"]) == 1, word


def test_bad_config_is_rejected(monkeypatch):
    from omegaconf import OmegaConf

    import calmrl.envs.minihack as minihack

    with pytest.raises(ValueError, match="MiniHack gym id"):
        MiniHack("KeyRoom")
    with pytest.raises(ValueError, match="odd number"):
        MiniHack(KEYROOM, crop_size=8)
    monkeypatch.setattr(minihack, "REQUIRED_MODULES", ("calmrl_no_such_module",))
    assert "pip install -e '.[minihack]'" in MiniHack.check_config(OmegaConf.create({"task": KEYROOM}))
    monkeypatch.setattr(minihack, "REQUIRED_MODULES", ())
    assert MiniHack.check_config(OmegaConf.create({"task": KEYROOM})) is None
    assert "not a MiniHack task" in MiniHack.check_config(OmegaConf.create({"task": "CartPole-v1"}))
