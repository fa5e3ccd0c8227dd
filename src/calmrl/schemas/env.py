"""The env group's schemas: what every text env takes (turns, the invalid-action penalty, evaluation seeds, the
env pool) and each env's own settings. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from omegaconf import MISSING

from calmrl.schemas.judge import JudgeBackend, JudgeConfig


class EnvPoolKind(StrEnum):
    inline = "inline"  # envs in the training process; exceptions are caught per env
    process = "process"  # one worker process per env, stepped in parallel, with a per-call timeout


@dataclass
class EnvConfig:
    name: str = MISSING
    max_steps: int = 12  # turns per episode
    invalid_penalty: float = 0.1  # subtracted from a step's reward when its action is invalid
    eval_episodes: int = 64  # held-out episodes per greedy evaluation
    eval_seed_offset: int = 1_000_000_000  # eval seeds start here; training seeds stay below it
    pool: EnvPoolKind = EnvPoolKind.inline
    timeout_s: float = 60.0  # process pool: a reset/step slower than this ends that trajectory


@dataclass
class GridWorldConfig(EnvConfig):
    size: int = 5
    walls: int = 3
    key: bool = False
    distances: bool = False  # "goal 2 north" (true) or "goal north" (false)
    walls_text: bool = False  # also name the blocked directions ("wall east .")


class WebShopReward(StrEnum):
    success = "success"  # success_reward for a purchase scoring 1.0, else 0 (verl-agent / GiGPO)
    score = "score"  # the official purchase score in [0, 1]


@dataclass
class WebShopConfig(EnvConfig):
    data_dir: str | None = None  # the folder with the official WebShop data files (docs/envs/webshop.md)
    products_file: str = "items_shuffle_1000.json"
    attributes_file: str = "items_ins_v2_1000.json"
    human_goals: bool = True  # human instructions (items_human_ins.json), else synthetic goals
    human_goals_file: str = "items_human_ins.json"
    reviews_file: str | None = "reviews.json"  # optional: shown on the Reviews page when present
    num_products: int | None = None  # only the first N products (the files are pre-shuffled)
    eval_goals: int = 500  # goals[:eval_goals] are held out (the official test split), the rest train
    reward: WebShopReward = WebShopReward.success
    success_reward: float = 10.0
    spacy_model: str | None = None  # e.g. en_core_web_lg: the official noun parse for the type reward


class OracleKind(StrEnum):
    rule = "rule"  # answers from the word list's attributes and facts (rapidfuzz matching)
    judge = "judge"  # an LLM oracle on the judge backends: env.judge, env.oracle_prompt (envs/oracles.py)


@dataclass
class MathConfig(EnvConfig):
    max_steps: int = 1  # single-turn: the whole response is the one step
    data_path: str | None = None  # JSONL, GSM8K (question, answer '#### 42') or MATH (problem, solution \boxed{})
    eval_data_path: str | None = None  # held-out problems; None = data_path


@dataclass
class DialogueGameConfig(EnvConfig):
    max_steps: int = 20  # ArCHer: at most 20 questions
    words_path: str | None = None  # word list (.json with attributes, or .txt); None = the packaged one
    oracle: OracleKind = OracleKind.rule
    match_threshold: float = 85.0  # rule oracle: rapidfuzz score (0-100) a question must reach to match
    guess_threshold: float = 90.0  # rapidfuzz score that counts a misspelt word as a guess
    # oracle=judge: the judge (backend hf | openai; cache_path None = ~/.cache/calmrl/judge_cache.sqlite) and
    # its prompt, fields {word} {category} {question}; None = the game's template (envs/oracles.py)
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(backend=JudgeBackend.openai))
    oracle_prompt: str | None = None


@dataclass
class MultiTurnInstructConfig(EnvConfig):
    max_steps: int = 50  # assistant turns per conversation before truncation
    data_path: str | None = None  # the benchmark's dataset.json (task -> conversation id -> turns)
    eval_data_path: str | None = None  # None = data_path
    categories: list[str] | None = None  # only these tasks (e.g. [memorization]); None = all nine
    ground_truth_context: bool = False  # earlier assistant turns show the reference, not the model's reply
    turn_window: int | None = None  # keep only the last N turns of context; None = the whole conversation
    success_threshold: float = 0.5  # an episode succeeds when its mean turn score reaches this


class AlfWorldSplit(StrEnum):
    train = "train"  # 3553 games
    valid_seen = "valid_seen"  # in-distribution evaluation (140 games; verl-agent's default eval set)
    valid_unseen = "valid_unseen"  # out-of-distribution evaluation (134 games)


@dataclass
class AlfWorldConfig(EnvConfig):
    max_steps: int = 50
    data_path: str | None = None  # the json_2.1.1 folder of alfworld-download; None = $ALFWORLD_DATA/json_2.1.1
    split: AlfWorldSplit = AlfWorldSplit.train  # games of the training seeds
    eval_split: AlfWorldSplit = AlfWorldSplit.valid_seen  # games of the evaluation seeds (>= eval_seed_offset)
    task_types: list[str] | None = None  # only these of the six task types; None = all six
    success_reward: float = 10.0  # paid when the goal holds (verl-agent / GiGPO: 10)


@dataclass
class MiniHackConfig(EnvConfig):
    max_steps: int = 100
    task: str = "MiniHack-KeyRoom-S5-v0"  # any registered MiniHack gym id
    crop_size: int = 9  # side of the glyph crop around the agent (MiniHack's obs_crop_h = obs_crop_w)
    reward_win: float = 1.0  # MiniHack's reward for reaching the goal
    penalty_step: float = 0.0  # MiniHack's reward for a step that costs no game time (e.g. a bumped wall)
    # NetHack reads the system clock at start (full/new moon, Friday 13th, night, midnight change the game);
    # False = NLE's fix_moon_phase: those come from the seed, so a seed names one game on any date
    real_clock: bool = False


@dataclass
class MultiGridConfig(EnvConfig):
    size: int = 5
    agents: int = 2
    dirt: int = 4  # dirty cells to clean
    max_steps: int = 30
    step_cost: float = 0.01  # subtracted from the team reward every turn
    eval_episodes: int = 256
