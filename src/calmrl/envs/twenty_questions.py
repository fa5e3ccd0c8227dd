"""Twenty Questions and Guess My City (ArCHer): multi-turn dialogue games with a hidden word.

The env hides one entry of a word list (task seed s picks entry s mod n); each turn the model asks one
free-form question (the whole response, see `Observation.dialogue`) and an `Oracle` answers it: yes/no
in Twenty Questions, short free text in Guess My City. A question that names the hidden word (or one
of its aliases) ends the episode with success; naming another word of the list is a wrong guess
("No."). Rewards follow ArCHer: -1 per turn, 0 on the successful turn, at most `max_steps` (20) turns.

Guess detection lives in the env, not the oracle, so every oracle ends episodes the same way. The
oracle is pluggable: `RuleOracle` answers from the word list's attributes and facts with rapidfuzz
matching (deterministic, for tests and CPU runs); `oracle=judge` is an LLM oracle on the judge backends
(`JudgeOracle`, envs/oracles.py: `env.judge`, `env.oracle_prompt`).

Anchor: the set of facts established so far, each "key=answer" with the oracle's canonical key (the
attribute or topic it matched, e.g. "animal=yes"), sorted. Two dialogues that learned the same facts
about the hidden word are in the same information state for the guesser, whatever the order or the
wording of their questions, so GiGPO compares their returns from that state; the raw transcript would
almost never repeat across a group.

Word list (`words_path`, JSON; the package ships one per game in calmrl/envs/data/):
  {"topics": {"country": ["country", "nation", "where"], ...},            # optional, free-text games
   "words": [{"word": "Paris", "aliases": [], "category": "Europe",
              "attributes": ["capital", "on a river"],                     # yes/no facts that hold
              "facts": {"country": "France", "language": "French"}}]}      # topic -> short answer
A `.txt` file (one word per line) also works: the rule oracle then only recognises guesses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Protocol

from calmrl.envs.base import ENVS, Observation, StepResult
from calmrl.envs.oracles import NO, UNKNOWN, YES, Reply, normalize
from calmrl.errors import ConfigError

OPENING = "Ask your first question."
CORRECT = "Yes! You guessed it."
# Words that carry no content in a question ("does it have four legs" -> "four legs"); dropped before
# fuzzy matching so the attribute's own words decide the score.
_FILLER = frozenset(
    "is it a an the does do did can could would will has have having be are was were its this that "
    "there you your they i me my of please".split()
)
_WH = frozenset("what which where who how when".split())


@dataclass(frozen=True)
class Secret:
    word: str
    aliases: tuple[str, ...] = ()
    category: str = ""
    attributes: frozenset[str] = frozenset()
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.word, *self.aliases)


class Oracle(Protocol):
    """Answers a question about the hidden word. Guesses never reach it: the env handles them."""

    def answer(self, secret: Secret, question: str) -> Reply: ...


@dataclass
class WordList:
    secrets: list[Secret]
    topics: dict[str, list[str]]  # topic -> phrases that ask about it


def load_words(path: str | Path) -> WordList:
    """A word list in the JSON layout of the module docstring, or a .txt file of one word per line."""
    path = Path(path).expanduser()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        secrets = [Secret(line.strip()) for line in text.splitlines() if line.strip()]
        topics: dict[str, list[str]] = {}
    else:
        data = json.loads(text)
        try:
            secrets = [
                Secret(
                    str(w["word"]),
                    tuple(str(a) for a in w.get("aliases", ())),
                    str(w.get("category", "")),
                    frozenset(normalize(a) for a in w.get("attributes", ())),
                    {normalize(k): str(v) for k, v in w.get("facts", {}).items()},
                )
                for w in data["words"]
            ]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: every entry of 'words' needs a 'word' ({exc!r})") from None
        topics = {normalize(k): [normalize(p) for p in v] for k, v in data.get("topics", {}).items()}
    if not secrets:
        raise ValueError(f"{path} holds no words")
    return WordList(secrets, topics)


class RuleOracle:
    """Answers from the word list: yes/no for an attribute or a fact value, the fact for a wh-question.

    Question and phrases are compared without filler words ("does it have four legs" ~ "has four
    legs"), with rapidfuzz's token-set ratio; among the phrases scoring at least `threshold`, the one
    closest to the whole question wins (so "farm animal" beats "animal" for "is it a farm animal").
    A wh-question (when the list has facts) is matched against the topic phrases and answered with the
    fact; any other question against every attribute and fact value, answered "Yes." when the hidden
    word holds a phrase containing the matched one ("spanish" in "spanish and catalan"), else "No.".
    No match at all: "I don't know."
    """

    def __init__(self, words: WordList, threshold: float = 85.0):
        self.threshold = float(threshold)
        phrases = {a for s in words.secrets for a in s.attributes} | {
            normalize(v) for s in words.secrets for v in s.facts.values()
        }
        self.phrases = {_core(p): p for p in sorted(phrases) if _core(p)}
        topics = {p: t for t, ps in words.topics.items() for p in (t, *ps)}
        topics.update({k: k for s in words.secrets for k in s.facts if k not in topics})
        self.topics = {_core(p): t for p, t in topics.items() if _core(p)}

    def answer(self, secret: Secret, question: str) -> Reply:
        words = normalize(question).split()
        core = _core(" ".join(words))
        if words and words[0] in _WH and secret.facts:
            topic = self._best(core, self.topics)
            if topic is not None:
                return Reply(f"{secret.facts[topic]}." if topic in secret.facts else UNKNOWN, topic)
        phrase = self._best(core, self.phrases) if core else None
        if phrase is None:
            return Reply(UNKNOWN, normalize(question))
        asked = set(_core(phrase).split())
        held = [*secret.attributes, *(normalize(v) for v in secret.facts.values())]
        return Reply(YES if any(asked <= set(_core(h).split()) for h in held) else NO, phrase)

    def _best(self, query: str, choices: dict[str, str]) -> str | None:
        """The value of the choice (keyed by its core words) that best matches `query`, or None."""
        from rapidfuzz import fuzz, process

        found = process.extract(
            query, list(choices), scorer=fuzz.token_set_ratio, score_cutoff=self.threshold, limit=None
        )
        if not found:
            return None
        best = max(found, key=lambda m: (m[1], fuzz.token_sort_ratio(query, m[0])))
        return choices[best[0]]


def _core(text: str) -> str:
    return " ".join(w for w in normalize(text).split() if w not in _FILLER)


def make_oracle(
    name: str, words: WordList, threshold: float, judge=None, prompt: str | None = None, answers: str = "yes_no"
) -> Oracle:
    if name == "rule":
        return RuleOracle(words, threshold)
    if name == "judge":
        from calmrl.envs.oracles import FREE_TEXT_PROMPT, YES_NO_PROMPT, JudgeOracle

        default = YES_NO_PROMPT if answers == "yes_no" else FREE_TEXT_PROMPT
        return JudgeOracle(judge, answers, prompt, default_prompt=default)
    raise ConfigError(f"env.oracle={name} is unknown; use env.oracle=rule or env.oracle=judge")


class DialogueGame:
    """A hidden-word dialogue game; the subclasses name the game, its default word list and its task."""

    game = ""
    default_words = ""
    task = ""
    answers = "yes_no"  # the judge oracle's answers: yes_no | free_text (envs/oracles.py)

    def __init__(
        self,
        words_path: str | None = None,
        oracle: str = "rule",
        match_threshold: float = 85.0,
        guess_threshold: float = 90.0,
        max_steps: int = 20,
        judge=None,  # oracle=judge: a JudgeConfig (dict or DictConfig, missing keys take its defaults)
        oracle_prompt: str | None = None,  # oracle=judge: the template; None = the game's (envs/oracles.py)
    ):
        if max_steps < 1:
            raise ValueError(f"{self.game} max_steps must be at least 1, got {max_steps}")
        self.words = load_words(words_path) if words_path else self._packaged_words()
        self.oracle = make_oracle(oracle, self.words, match_threshold, judge, oracle_prompt, self.answers)
        self.guess_threshold = float(guess_threshold)
        self.max_steps = int(max_steps)
        self._names = {normalize(n): i for i, s in enumerate(self.words.secrets) for n in s.names}
        self._secret: Secret | None = None
        self._done = False

    @classmethod
    def check_config(cls, cfg) -> str | None:
        """What is wrong with an env config, in one sentence, or None: run before any model loads."""
        path = cfg.get("words_path")
        if path and not Path(path).expanduser().is_file():
            return f"env.words_path={path} is not a file; give a word list (.json or .txt)"
        if cfg.get("oracle", "rule") == "judge":
            from calmrl.envs.oracles import FREE_TEXT_PROMPT, YES_NO_PROMPT, check_judge_oracle

            problem = check_judge_oracle(cfg, YES_NO_PROMPT if cls.answers == "yes_no" else FREE_TEXT_PROMPT)
            if problem is not None:
                return problem
        for key in ("match_threshold", "guess_threshold"):
            if key in cfg and not 0 < cfg[key] <= 100:
                return f"env.{key} must be in (0, 100] (a rapidfuzz score), got {cfg[key]}"
        return None

    def _packaged_words(self) -> WordList:
        with resources.as_file(resources.files("calmrl.envs") / "data" / self.default_words) as path:
            return load_words(path)

    def vocabulary(self) -> list[str]:
        """Words of the task, the oracle's replies, every word, alias, attribute, fact and question word."""
        texts = [self.task, OPENING, YES, NO, UNKNOWN, CORRECT, "Is it a an the in Does have Can What Where ?"]
        for s in self.words.secrets:
            texts += [*s.names, *s.attributes, *s.facts, *s.facts.values()]
        texts += [p for phrases in self.words.topics.values() for p in phrases]
        return sorted({w for t in texts for w in t.split()} | {w for t in texts for w in normalize(t).split()})

    def reset(self, seed: int) -> Observation:
        self._secret = self.words.secrets[int(seed) % len(self.words.secrets)]
        self._facts: dict[str, str] = {}
        self._dialogue: tuple[tuple[str, str], ...] = (("user", OPENING),)
        self.steps, self._done = 0, False
        return self._observe()

    def step(self, action: str) -> StepResult:
        if self._secret is None:
            raise RuntimeError(f"{self.game} step() called before reset()")
        if self._done:
            raise RuntimeError(f"{self.game} step() called after the episode ended; call reset()")
        self.steps += 1
        question = action.strip()
        info: dict = {"category": self._secret.category or self.game}
        if not normalize(question):  # nothing asked: the turn is spent, nothing is learned
            info["invalid"] = True
            reply = Reply(UNKNOWN, "")
        else:
            guessed = self._guessed(question)
            if guessed is self._secret:
                reply = Reply(CORRECT, f"guess {normalize(self._secret.word)}")
                info["success"] = True
            elif guessed is not None:
                reply = Reply(NO, f"guess {normalize(guessed.word)}")
            else:
                reply = self.oracle.answer(self._secret, question)
            if reply.failed:  # the judge was down (on_error=zero): "I don't know.", nothing learned
                info["oracle_failed"] = True
            else:
                self._facts[reply.key] = normalize(reply.text)
        self._dialogue += (("assistant", question), ("user", reply.text))
        if info.get("success"):
            self._done = True
            return StepResult(self._observe(), 0.0, True, info)
        if self.steps >= self.max_steps:
            self._done = True
            info.update(success=False, truncated=True)
        return StepResult(self._observe(), -1.0, self._done, info)

    def _guessed(self, question: str) -> Secret | None:
        """The list word the question names, if any: whole words, a plural, or (names of 4+ letters) a
        rapidfuzz ratio >= guess_threshold for a typo; the closest name wins."""
        from rapidfuzz import fuzz

        tokens = normalize(question).split()
        best, best_score = None, self.guess_threshold
        for name, i in self._names.items():
            n = len(name.split())
            for k in range(len(tokens) - n + 1):
                span = " ".join(tokens[k : k + n])
                if span in (name, name + "s", name + "es"):
                    score = 100.0
                else:
                    score = fuzz.ratio(name, span) if len(name) >= 4 else 0.0
                if score >= best_score:
                    best, best_score = self.words.secrets[i], score
        return best

    def _observe(self) -> Observation:
        facts = sorted(f"{k}={v}" for k, v in self._facts.items())
        anchor = "; ".join(facts) or "nothing known"
        return Observation(
            self._dialogue[-1][1], anchor, dialogue=self._dialogue, category=self._secret.category or self.game
        )


@ENVS.register("twenty_questions")
class TwentyQuestions(DialogueGame):
    game = "twenty_questions"
    default_words = "twenty_questions.json"
    task = (
        "I am thinking of an object. Find it by asking yes or no questions, one per turn. "
        "Guess it by naming it, e.g. Is it a cat?"
    )


@ENVS.register("guess_my_city")
class GuessMyCity(DialogueGame):
    game = "guess_my_city"
    default_words = "guess_my_city.json"
    answers = "free_text"
    task = (
        "I am thinking of a city. Find it by asking questions, one per turn; I answer briefly. "
        "Guess it by naming it, e.g. Is it Paris?"
    )
