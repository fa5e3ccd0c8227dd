"""Math reasoning: single-turn problems from a JSONL (or JSON-array) file, answers checked with math-verify.

One episode is one problem and one step: the model's whole response (free-form reasoning, see
`Observation.dialogue`) is the action, and the reward is 1.0 when math-verify finds the gold answer
in it, else 0.0. Three layouts are read, record by record:
  - GSM8K: {"question": ..., "answer": "... reasoning ...\\n#### 42"}   (gold = the text after '####')
  - MATH:  {"problem": ..., "solution": "... \\boxed{\\frac{1}{2}} ..."} (gold = `answer`, else the last \\boxed{})
  - PURE:  {"question": ..., "answer": "42" or "null", "ref_answer": ...} (CJReinforce/PURE's data files)
A record's `category` (or MATH's `type`, MATH-500's `subject`; else the file name) becomes `info["category"]` for per-category results.

Problems without an answer (PURE's best run gives the verifiable reward to ~10% of its problems only): an
`answer` of JSON null or the string "null" (PURE's marker), or a MATH solution without \\boxed{} and no `answer`.
They are trained on, but carry no verifiable reward: reward 0 for every response and `info["has_answer"] = False`,
which the batch keeps (`Batch.has_answer`) and `algo=pure` reads to leave the verifiable term off their rows.
A withheld answer (PURE's `ref_answer`; a "null"-answer MATH record's boxed solution) is never rewarded: only
`info["success"]` is measured against it. Evaluation uses the problems that have some answer to check.

Task seeds index the problem list: a training seed s picks problem s mod n of `data_path`; a held-out
seed `eval_seed_offset + i` picks problem i mod m of `eval_data_path` (default: the same file), so the
trainer's random training seeds and the evaluator's consecutive eval seeds both name one problem each.

`split_steps` cuts a reasoning trace into the steps a process reward model scores (PURE's unit).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from calmrl.envs.base import ENVS, Observation, StepResult, check_data_files
from calmrl.errors import ConfigError

TASK = (
    "Solve the problem. Reason step by step, leave a blank line between steps, and put the final answer in \\boxed{}."
)

_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_EVAL_SEED_OFFSET = 1_000_000_000  # the EnvConfig default; the config passes the real one
_NULL = "null"  # how PURE's data files write "no answer"

log = logging.getLogger(__name__)


def split_steps(text: str) -> list[str]:
    """The reasoning steps of `text`: paragraphs separated by blank lines, stripped, empty ones dropped."""
    return [step.strip() for step in _BLANK_LINE.split(text.replace("\r\n", "\n")) if step.strip()]


@dataclass(frozen=True)
class Problem:
    question: str
    # the gold final answer the reward checks (GSM8K: after '####'; MATH: the last \boxed{}); None: no verifiable reward
    answer: str | None
    solution: str  # the reference reasoning ("" when the data has none)
    category: str
    reference: str | None = None  # an answer withheld from the reward (PURE's ref_answer): only success uses it

    @property
    def has_answer(self) -> bool:
        return self.answer is not None

    @property
    def gold(self) -> str | None:
        """What success is measured against: the answer, else the withheld reference, else None."""
        return self.answer if self.answer is not None else self.reference


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}) in `text`, braces matched; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None  # unbalanced braces


def _given(value) -> str | None:
    """An answer field as text, or None when it says "no answer" (JSON null, "null", or only blanks)."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", _NULL) else text


def parse_record(record: dict, default_category: str) -> Problem:
    """One record in the GSM8K, MATH or PURE layout as a Problem; ValueError names what is malformed."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    reference = None
    if "question" in record and "answer" in record and "ref_answer" in record:  # PURE: final answers, "null" = none
        solution = ""
        answer = _given(record["answer"])
        reference = _given(record["ref_answer"])
        question = str(record["question"])
    elif "question" in record and "answer" in record:  # GSM8K
        solution = "" if _given(record["answer"]) is None else str(record["answer"])
        answer = None
        if solution:
            if "####" not in solution:
                raise ValueError("a GSM8K 'answer' must end with '#### <final answer>' (or be null: no answer)")
            answer = _given(solution.rsplit("####", 1)[1].replace(",", ""))
        question = str(record["question"])
    elif "problem" in record and "solution" in record:  # MATH
        solution = str(record["solution"])
        boxed = last_boxed(solution)
        if str(record.get("answer")).strip() == _NULL:  # withheld on purpose: the boxed solution only scores success
            answer, reference = None, boxed
        else:
            answer = _given(record.get("answer")) or _given(boxed)
        question = str(record["problem"])
    else:
        raise ValueError(
            "expected GSM8K keys (question, answer), MATH keys (problem, solution) or PURE keys "
            f"(question, answer, ref_answer), got {sorted(record)}"
        )
    category = str(record.get("category") or record.get("type") or record.get("subject") or default_category)
    return Problem(question.strip(), answer, solution.strip(), category, reference)


def _records(path: Path):
    """(where, record) for each record of a JSONL file, or of a file holding one JSON array (PURE's data)."""
    with path.open(encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        for i, record in enumerate(items):
            yield f"{path}[{i}]", record
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield f"{path}:{n}", json.loads(line)
            except ValueError as exc:  # JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{n}: {exc}") from None


def load_problems(path: str | Path) -> list[Problem]:
    """Every problem of a JSONL or JSON-array file (blank lines skipped); errors name the file and record."""
    path = Path(path).expanduser()
    problems = []
    default_category = path.stem
    for where, record in _records(path):
        try:
            problems.append(parse_record(record, default_category))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    if not problems:
        raise ValueError(f"{path} holds no problems")
    answerless = sum(not p.has_answer for p in problems)
    if answerless:
        log.info("%s: %d of %d problems have no answer (no verifiable reward)", path, answerless, len(problems))
    return problems


def scorable(problems: list[Problem], path) -> list[Problem]:
    """The problems success can be measured on (an answer or a withheld one): the evaluation set."""
    kept = [p for p in problems if p.gold is not None]
    if not kept:
        raise ValueError(f"{path}: no problem has an answer (or a withheld ref_answer) to evaluate against")
    return kept


def is_correct(response: str, gold: str) -> bool:
    """math-verify: does the final answer in `response` equal `gold` (numbers, fractions, LaTeX, sets)?"""
    from math_verify import parse, verify  # sympy-heavy: imported on first use

    # math-verify times out with signal.alarm, which only the main thread may use; elsewhere no timeout.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    if not gold_parsed:
        gold_parsed = parse(gold, parsing_timeout=timeout)
    answer = parse(response, parsing_timeout=timeout)
    return bool(answer) and bool(verify(gold_parsed, answer, timeout_seconds=timeout))


@ENVS.register("math")
class MathEnv:
    """Single-turn reasoning problems; reward 1 for a verified final answer, 0 otherwise (always 0 without one)."""

    def __init__(
        self,
        data_path: str | None = None,
        eval_data_path: str | None = None,
        eval_seed_offset: int = _EVAL_SEED_OFFSET,
        max_steps: int = 1,  # noqa: ARG002  (one step per episode whatever the config says)
        task: str = TASK,
    ):
        if not data_path:
            raise ConfigError(_MISSING_DATA)
        self.train = load_problems(data_path)
        # an answerless problem cannot be scored, so held-out seeds index only the ones that can
        self.eval = scorable(
            load_problems(eval_data_path) if eval_data_path else self.train, eval_data_path or data_path
        )
        self.eval_seed_offset = int(eval_seed_offset)
        self.task = task
        self._problem: Problem | None = None
        self._obs: Observation | None = None
        self._done = False

    @staticmethod
    def check_config(cfg) -> str | None:
        """What is wrong with an env config, in one sentence, or None: run before any model loads."""
        return check_data_files(cfg, _MISSING_DATA, "a GSM8K-, MATH- or PURE-layout JSONL (or JSON-array) file")

    def vocabulary(self) -> list[str]:
        """Every whitespace-separated word of the task and the data, plus single digits and symbols.

        The tiny policy's tokenizer is built from these words, so it can read every problem and write
        every reference solution (and any number, digit by digit).
        """
        words = set(self.task.split()) | set("0123456789") | set("+-*/=().,$\\{}^")
        for problem in {*self.train, *self.eval}:
            for text in (problem.question, problem.solution, problem.answer, problem.reference):
                words.update((text or "").split())
        return sorted(words)

    def problem(self, seed: int) -> Problem:
        """The problem a seed names (see the module docstring)."""
        if seed >= self.eval_seed_offset:
            return self.eval[(seed - self.eval_seed_offset) % len(self.eval)]
        return self.train[seed % len(self.train)]

    def reset(self, seed: int) -> Observation:
        self._problem = self.problem(int(seed))
        split = "eval" if seed >= self.eval_seed_offset else "train"
        index = (seed - self.eval_seed_offset) % len(self.eval) if split == "eval" else seed % len(self.train)
        q = self._problem.question
        self._obs = Observation(q, f"{split}:{index}", dialogue=(("user", q),), category=self._problem.category)
        self._done = False
        return self._obs

    def step(self, action: str) -> StepResult:
        if self._problem is None:
            raise RuntimeError("math step() called before reset()")
        if self._done:
            raise RuntimeError("math step() called after the episode ended; call reset()")
        self._done = True
        problem = self._problem
        gold = problem.gold
        # success is also measured on a withheld answer (for the metrics); the reward only on a given one
        success = gold is not None and is_correct(action, gold)
        rewarded = problem.has_answer and success
        info = {
            "success": success,
            "category": problem.category,
            "steps": len(split_steps(action)),
            "has_answer": problem.has_answer,
        }
        return StepResult(self._obs, 1.0 if rewarded else 0.0, True, info)


_MISSING_DATA = (
    "env=math needs env.data_path=/path/to/train.jsonl (GSM8K layout: question, answer ending in '#### 42'; "
    "MATH layout: problem, solution with \\boxed{}; PURE layout: question, answer, ref_answer); see docs/envs/math.md"
)
