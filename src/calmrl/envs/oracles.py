"""The LLM oracle of the dialogue games (`env.oracle=judge`): the judge backends answer the questions.

    env = TwentyQuestions(oracle="judge", judge={"backend": "openai", "model": "M", "base_url": URL})

`JudgeOracle.answer(secret, question)` renders `env.oracle_prompt` with the hidden word and the question,
asks the judge of `env.judge` (the `JudgeConfig` schema the calm shaper uses: backend hf | openai, the
on-disk cache, retries, `on_error`) and normalises the answer:

- Twenty Questions (`answers="yes_no"`): the first word of the first line decides — "Yes, it is." -> "Yes.",
  "no" -> "No."; anything else ("Maybe", "I'm not sure", "") -> "I don't know.".
- Guess My City (`answers="free_text"`): the first line, without an "Answer:" prefix or quotes, at most
  `MAX_ANSWER_CHARS`, ending with a period; a bare yes/no ("yes", "No, it is not.") becomes
  "Yes." / "No.", an "I don't know"-like answer "I don't know.", and the hidden city's names are replaced by
  "it" (an oracle that leaks the answer would make the game trivial).

A judge that fails (after its retries) follows `judge.on_error`: `fail` stops the run with the backend's
message; `zero` answers "I don't know." (`Reply.failed`, counted in `failures`, not cached, nothing learned)
and the episode goes on.

One judge per distinct judge config and cache file is shared by every env of a process (`shared_judge`), so
`env.pool=inline` with `backend=hf` loads the model once and all envs share one cache connection; with
`env.pool=process` each worker builds its own (its steps, hence its requests, run in parallel: use it with
`backend=openai`). The judge is built at the first question, not in the constructor, so building an env for
its vocabulary costs no connection or model load.

Cache: `env.judge.cache_path`, default (null) `$XDG_CACHE_HOME/calmrl/judge_cache.sqlite` (`~/.cache/calmrl/`):
the env does not know its run directory, and an oracle's answers are worth sharing across runs — the key is
(backend, model, generation parameters, the full prompt with the hidden word), so a different model or
prompt never gets a stale answer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calmrl.errors import ConfigError
from calmrl.schemas.judge import JudgeConfig

# what an oracle may answer (the 20-questions env's replies)
YES, NO, UNKNOWN = "Yes.", "No.", "I don't know."
_TOKEN = re.compile(r"[a-z0-9]+")


def normalize(text: str) -> str:
    """Lower-case words only (punctuation and extra spaces gone): the unit of comparison."""
    return " ".join(_TOKEN.findall(text.lower()))


@dataclass(frozen=True)
class Reply:
    text: str  # what the oracle says
    key: str  # canonical form of what was asked (an attribute, a topic, or the normalised question)
    failed: bool = False  # the oracle could not answer (a judge down, on_error=zero): nothing is learned


#: fields an oracle prompt may use
ORACLE_FIELDS = ("word", "category", "question")
MAX_ANSWER_CHARS = 200

YES_NO_PROMPT = (
    "You are the oracle in a game of twenty questions. The hidden object is: {word}.\n"
    "Answer the player's question about the hidden object truthfully with one word, Yes or No.\n"
    "Question: {question}\n"
    "Answer:"
)
FREE_TEXT_PROMPT = (
    "You are the oracle in a game of guess my city. The hidden city is: {word}.\n"
    "Answer the player's question about the hidden city truthfully and briefly, in a few words, "
    "without naming the city.\n"
    "Question: {question}\n"
    "Answer:"
)

_YES = frozenset("yes yeah yep yup correct true right indeed affirmative".split())
_NO = frozenset("no nope nah false incorrect not negative".split())
_BARE = frozenset("it is isn t not does doesn do don they are aren that s yes no indeed".split())  # no content
_LEAD = frozenset("answer oracle a".split())  # "Answer: Yes" -> "yes"
# normalised openings of an answer that does not know ("I don't know" -> "i don t know")
_UNKNOWN = (
    "i don t know",
    "i do not know",
    "i m not sure",
    "i am not sure",
    "not sure",
    "unsure",
    "unknown",
    "no idea",
    "maybe",
    "i can t",
    "i cannot",
    "it depends",
    "hard to say",
)
_PREFIX = re.compile(r"^\s*(answer|oracle|a)\s*:\s*", re.IGNORECASE)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "calmrl"


def judge_config(judge: Any) -> Any:
    """`judge` (a dict or DictConfig, possibly partial) over the `JudgeConfig` defaults, type-checked."""
    from omegaconf import OmegaConf

    if judge is None:
        raise ConfigError(_needs_backend(None))
    return OmegaConf.merge(OmegaConf.structured(JudgeConfig), judge)


def check_judge_oracle(env_cfg: Any, default_prompt: str) -> str | None:
    """What is wrong with the judge oracle config of `env_cfg`, in one sentence, or None."""
    from calmrl.judges.subgoals import check_template
    from calmrl.schemas.judge import validate_judge

    try:
        judge = judge_config(env_cfg.get("judge"))
        if str(judge.backend) not in ("openai", "hf"):
            return _needs_backend(str(judge.backend))
        validate_judge(judge, "env.judge")
    except ConfigError as exc:
        return str(exc)
    except Exception as exc:  # omegaconf: a wrong type or an unknown key in env.judge
        return f"env.judge is not a valid judge config: {exc}".splitlines()[0]
    prompt = env_cfg.get("oracle_prompt") or default_prompt
    problem = check_template(prompt, ORACLE_FIELDS)
    if problem is not None:
        return f"env.oracle_prompt {problem}"
    if "{question}" not in prompt or "{word}" not in prompt:
        return "env.oracle_prompt must contain {word} (the hidden word) and {question} (the player's question)"
    return None


def _needs_backend(got: str | None) -> str:
    return (
        "env.oracle=judge needs env.judge.backend=openai (env.judge.model=<served model> "
        "env.judge.base_url=http://host:port/v1) or env.judge.backend=hf (env.judge.model=<a save_pretrained "
        f"directory>); got backend={got}. env.oracle=rule answers from the word list without an LLM"
    )


_SHARED: dict[str, Any] = {}
_SHARED_LOCK = threading.Lock()


def shared_judge(cfg: Any, cache_dir: Path):
    """One `CachedJudge` per (judge config, cache dir) in this process."""
    from omegaconf import OmegaConf

    from calmrl.judges import build_judge

    key = json.dumps([OmegaConf.to_container(cfg, resolve=True), str(cache_dir)], sort_keys=True, default=str)
    with _SHARED_LOCK:
        if key not in _SHARED:
            # one request per question: httpx's INFO line per request would flood the run's log
            if logging.getLogger("httpx").level == logging.NOTSET:
                logging.getLogger("httpx").setLevel(logging.WARNING)
            _SHARED[key] = build_judge(cfg, cache_dir, config_key="env.judge")
        return _SHARED[key]


def parse_yes_no(text: str) -> bool | None:
    """True / False for a yes / no answer (its first word), None for anything else."""
    words = normalize(_first_line(text)).split()
    while words and words[0] in _LEAD:
        words.pop(0)
    if not words or " ".join(words).startswith(_UNKNOWN):
        return None
    return True if words[0] in _YES else False if words[0] in _NO else None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


class JudgeOracle:
    """An `Oracle` (twenty_questions.py) whose answers come from a judge backend; see the module docstring."""

    def __init__(self, judge: Any, answers: str, prompt: str | None = None, default_prompt: str = YES_NO_PROMPT):
        if answers not in ("yes_no", "free_text"):
            raise ValueError(f"answers must be 'yes_no' or 'free_text', got {answers!r}")
        self.cfg = judge_config(judge)
        if str(self.cfg.backend) not in ("openai", "hf"):
            raise ConfigError(_needs_backend(str(self.cfg.backend)))
        self.answers = answers
        self.prompt = prompt or default_prompt
        self.cache_dir = default_cache_dir()
        self.failures = 0  # questions answered "I don't know." because the judge failed (on_error=zero)
        self._judge = None

    @property
    def judge(self):
        if self._judge is None:
            self._judge = shared_judge(self.cfg, self.cache_dir)
        return self._judge

    def render(self, secret, question: str) -> str:
        return self.prompt.format(word=secret.word, category=secret.category, question=question)

    def answer(self, secret, question: str):
        judge = self.judge
        before = judge.totals["failures"]
        text = judge.complete([self.render(secret, question)])[0]
        key = normalize(question)
        if judge.totals["failures"] > before:
            self.failures += 1
            return Reply(UNKNOWN, key, failed=True)
        if self.answers == "yes_no":
            return Reply(self._yes_no_reply(text), key)
        return Reply(self._free_text_reply(text, secret), key)

    @staticmethod
    def _yes_no_reply(text: str) -> str:
        verdict = parse_yes_no(text)
        return UNKNOWN if verdict is None else YES if verdict else NO

    @staticmethod
    def _free_text_reply(text: str, secret) -> str:
        line = _PREFIX.sub("", _first_line(text).strip("\"'` ")).strip("\"'` ")
        words = normalize(line).split()
        if not words or " ".join(words).startswith(_UNKNOWN):
            return UNKNOWN
        verdict = parse_yes_no(line)
        if verdict is not None and set(words[1:]) <= _BARE:  # "yes", "No, it is not." (not "No, it is in Asia.")
            return YES if verdict else NO
        for name in sorted(secret.names, key=len, reverse=True):  # never reveal the hidden city
            line = re.sub(rf"\b{re.escape(name)}\b", "it", line, flags=re.IGNORECASE)
        if len(line) > MAX_ANSWER_CHARS:
            line = line[:MAX_ANSWER_CHARS].rsplit(" ", 1)[0]
        line = line.rstrip(" ,;:")
        return line if line.endswith((".", "!", "?")) else line + "."
