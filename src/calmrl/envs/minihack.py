"""MiniHack: NetHack tasks (the NetHack Learning Environment) in text, as in the CALM paper (KeyRoom first).

The task is any registered MiniHack gym id (`task`, default `MiniHack-KeyRoom-S5-v0`: pick up the key,
unlock the door, reach the stairs down). calmrl builds the text the model reads from NLE's observation
keys, each turn:

    map:            the `chars_crop` window around the agent (@), one text row per map row
    message:        NetHack's message line, when there is one
    inventory:      `inv_letters` + `inv_strs`, e.g. "f: a key named The Master Key of Thievery"

and the actions are the task's own NLE action set, each named by a fixed word (north, east, ..., pickup,
apply, open, kick, search, ...); the admissible actions are those words. The anchor is the raw glyph crop
(`glyphs_crop`, glyph ids), so steps acting from the same local view form one GiGPO step group.

A seed fixes NetHack's core and display RNGs (with NetHack's anti-TAS reseeding off), and, unless
`real_clock=True`, NLE's `fix_moon_phase` derives the clock-driven effects (full and new moon, Friday the 13th,
night, midnight) from the seed instead of the system clock, so a seed names one level and one run of the
game exactly, on any date. Rewards are MiniHack's own (`reward_win` on success, `penalty_step`
for a step that takes no game time); info["success"] is MiniHack's TASK_SUCCESSFUL end status, and every
info carries the task under "category". The `minihack` extra (nle, minihack) loads at the first reset.
"""

from __future__ import annotations

import string
from importlib.util import find_spec

from calmrl.envs.base import ENVS, Observation, StepResult

#: NLE action enum member name -> the word the model says; compass directions get full words
DIRECTIONS = {
    "N": "north",
    "E": "east",
    "S": "south",
    "W": "west",
    "NE": "northeast",
    "SE": "southeast",
    "SW": "southwest",
    "NW": "northwest",
}
#: the words of NLE's common commands (Command / MiscDirection / MiscAction members, lower-cased)
COMMAND_WORDS = (
    "pickup apply open close kick search wait up down eat zap puton wear quaff read fire throw wield "
    "pray look loot remove takeoff force move more"
).split()
REQUIRED_MODULES = ("nle", "minihack")


def action_word(action) -> str:
    """The word of an NLE action enum member: CompassDirection.NE -> northeast, Command.PICKUP -> pickup."""
    name = action.name
    return DIRECTIONS.get(name, name.lower())


@ENVS.register("minihack")
class MiniHack:
    """One MiniHack task; reset(seed) starts the level that the seed names."""

    def __init__(
        self,
        task: str = "MiniHack-KeyRoom-S5-v0",
        crop_size: int = 9,
        max_steps: int = 100,
        reward_win: float = 1.0,
        penalty_step: float = 0.0,
        real_clock: bool = False,
    ):
        if not task.startswith("MiniHack-"):
            raise ValueError(f"minihack task must be a MiniHack gym id such as MiniHack-KeyRoom-S5-v0, got {task!r}")
        if crop_size < 3 or crop_size % 2 == 0:
            raise ValueError(
                f"minihack crop_size must be an odd number >= 3 (the agent in the middle), got {crop_size}"
            )
        if max_steps < 1:
            raise ValueError(f"minihack max_steps must be at least 1, got {max_steps}")
        self.name, self.crop_size, self.max_steps = task, int(crop_size), int(max_steps)
        self.reward_win, self.penalty_step = float(reward_win), float(penalty_step)
        self.real_clock = bool(real_clock)
        self.task = _TASKS.get(task.split("-")[1], "reach the stairs down ( > ) .")
        self._gym = None
        self._actions: dict[str, int] = {}
        self._obs = None
        self._done = False

    @staticmethod
    def check_config(cfg) -> str | None:
        """A one-line problem with an env=minihack config, or None. Imports nothing."""
        missing = [m for m in REQUIRED_MODULES if find_spec(m) is None]
        if missing:
            return f"env=minihack needs the minihack extra ({', '.join(missing)} missing): pip install -e '.[minihack]'"
        if not str(cfg.get("task", "")).startswith("MiniHack-"):
            return f"env.task={cfg.get('task')} is not a MiniHack task id; e.g. env.task=MiniHack-KeyRoom-S5-v0"
        return None

    @classmethod
    def vocabulary(cls) -> list[str]:
        """Every action word, the observation's field names, and every printable character (map glyphs,
        messages and inventory lines are spelled from them)."""
        words = set(DIRECTIONS.values()) | set(COMMAND_WORDS) | {"map", "message", "inventory", "none", "\n"}
        words |= set(string.printable.strip())
        words |= {w for t in _TASKS.values() for w in t.split()}
        return sorted(words)

    @property
    def actions(self) -> tuple[str, ...]:
        """The task's action words, in NLE's action order (available after the first reset)."""
        return tuple(self._actions)

    def reset(self, seed: int) -> Observation:
        """Start the level of `seed` (NetHack's core and display RNGs seeded, reseeding off)."""
        env = self._env()
        seed = int(seed)
        env.unwrapped.seed(seed, seed, reseed=False)
        self._obs, _ = env.reset()
        self.steps, self._done = 0, False
        return self._observe()

    def step(self, action: str) -> StepResult:
        """Play one action word; a word outside the task's action set is invalid and takes no game time."""
        if self._obs is None:
            raise RuntimeError("minihack step() called before reset()")
        if self._done:
            raise RuntimeError("minihack step() called after the episode ended; call reset()")
        self.steps += 1
        word = action.strip().lower()
        info: dict = {"category": self.name}
        reward, ended = 0.0, False
        if word in self._actions:
            self._obs, reward, terminated, truncated, nle_info = self._gym.step(self._actions[word])
            ended = bool(terminated or truncated)
            status = nle_info.get("end_status")
            if ended:
                info["success"] = status == self._gym.unwrapped.StepStatus.TASK_SUCCESSFUL
                info["end_status"] = getattr(status, "name", str(status)).lower()
            if truncated:  # NLE's own step limit (max_episode_steps = max_steps)
                info["truncated"] = True
        else:
            info["invalid"] = True
        if not ended and self.steps >= self.max_steps:
            ended = True
            info.update(success=False, truncated=True)
        self._done = ended
        return StepResult(self._observe(), float(reward), ended, info)

    # -- internals -------------------------------------------------------------------------------

    def _env(self):
        if self._gym is None:
            import gymnasium as gym
            import minihack  # noqa: F401  (registers the MiniHack gym ids)

            self._gym = gym.make(
                self.name,
                observation_keys=("chars_crop", "glyphs_crop", "message", "inv_strs", "inv_letters"),
                obs_crop_h=self.crop_size,
                obs_crop_w=self.crop_size,
                max_episode_steps=self.max_steps,
                reward_win=self.reward_win,
                penalty_step=self.penalty_step,
                # without it NetHack reads the date at start: the same seed would be another game on a
                # full-moon day (luck +1) or a Friday the 13th (luck -1), and results would not reproduce
                fix_moon_phase=not self.real_clock,
            )
            self._actions = {action_word(a): i for i, a in enumerate(self._gym.unwrapped.actions)}
        return self._gym

    def _observe(self) -> Observation:
        obs = self._obs
        rows = ["".join(chr(c) if c else " " for c in row).rstrip() for row in obs["chars_crop"]]  # 0: off-map
        message = _text(obs["message"])
        items = [
            f"{chr(letter)}: {_text(line)}" for letter, line in zip(obs["inv_letters"], obs["inv_strs"], strict=True)
        ]
        items = [item for item, letter in zip(items, obs["inv_letters"], strict=True) if letter]
        text = (
            "map:\n" + "\n".join(rows) + f"\nmessage: {message or 'none'}\ninventory: " + ("; ".join(items) or "none")
        )
        anchor = "\n".join(" ".join(str(int(g)) for g in row) for row in obs["glyphs_crop"])
        return Observation(text=text, anchor=anchor, admissible=self.actions, category=self.name)


#: the instruction per MiniHack task family (the second part of the gym id)
_TASKS = {
    "KeyRoom": "pick up the key , unlock the door with it ( apply ) and reach the stairs down ( > ) .",
    "Room": "reach the stairs down ( > ) .",
    "Corridor": "reach the stairs down ( > ) .",
    "MazeWalk": "reach the stairs down ( > ) .",
    "River": "cross the river and reach the stairs down ( > ) .",
    "LavaCross": "cross the lava and reach the stairs down ( > ) .",
}


def _text(codes) -> str:
    """NLE's zero-padded byte arrays as text."""
    return bytes(int(c) for c in codes).split(b"\0", 1)[0].decode("latin-1").strip()
