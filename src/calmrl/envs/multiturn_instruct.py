"""MultiTurnInstruct ("Can Language Models Follow Multiple Turns of Entangled Instructions?", Han 2025).

One episode is one conversation of the benchmark; the model plays every assistant turn (a free-form
reply, see `Observation.dialogue`) and each reply's reward is the turn's metric against its
`evaluation_reference`, in [0, 1] (a turn without a reference is generated but scores nothing, as in
the official evaluation). `info["category"]` is the conversation's task (one of the nine below) and
`info["score"]` the turn's metric, so `calmrl eval` can report per-category means over scored turns,
which is the official summary.

Data (`data_path`), the official layouts:
  - dataset.json: {task: {conversation_id: [turn, ...]}}
  - the Hugging Face conversion: [{"category": task, "conversation_id": id, "turns": [turn, ...]}, ...]
    (a JSON list, or JSONL with one such record per line)
  turn = {"role": "user"|"assistant", "text": ..., "evaluation_reference": [str, ...] | null,
          "evaluation_metric": "bleu"|"intersection_over_union"|"matching_any"|"not_matching_any"|
                               "matching_any_exact"|"squad"}
Tasks: memorization (bleu), dynamic_instruction, dynamic_environment (intersection_over_union),
triggering (matching_any), multitasking (intersection_over_union, squad), recursive_reasoning
(matching_any_exact, matching_any), privacy_protection (not_matching_any), personalization
(matching_any_exact), prioritization (matching_any, matching_any_exact).

Seeds index the conversations in file order (training seed s: conversation s mod n of `data_path`;
held-out seed `eval_seed_offset + i`: conversation i mod m of `eval_data_path`, default the same file).
The anchor is "<conversation id>:<turn index>": every trajectory of a group reaches the same user
instruction at the same turn, whatever it replied before.
"""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from calmrl.envs.base import ENVS, Observation, StepResult, check_data_files
from calmrl.errors import ConfigError

_EVAL_SEED_OFFSET = 1_000_000_000  # the EnvConfig default; the config passes the real one
CATEGORIES = (
    "memorization",
    "dynamic_instruction",
    "dynamic_environment",
    "triggering",
    "multitasking",
    "recursive_reasoning",
    "privacy_protection",
    "personalization",
    "prioritization",
)


# ---------------------------------------------------------------- metrics: (response, references) -> [0, 1]
def matching_any(response: str, references: Sequence[str]) -> float:
    """1 if any reference occurs in the response (case-insensitive substring), else 0."""
    low = response.lower()
    return float(any(ref.lower() in low for ref in references))


def not_matching_any(response: str, references: Sequence[str]) -> float:
    """1 if no reference occurs in the response (privacy: the secret must not leak), else 0."""
    return 1.0 - matching_any(response, references)


_ANSWER_LINE = re.compile(r"Answer:[ \t]*(.+)")


def matching_any_exact(response: str, references: Sequence[str]) -> float:
    """1 if the response's last "Answer: X" line equals a reference (case-insensitive), else 0.

    The official function captures only one character after "Answer: " (a regex marked FIXME there);
    this takes the rest of the line, as its commented-out version does, and ignores a final period.
    """
    found = _ANSWER_LINE.findall(response)
    if not found:
        return 0.0
    answer = _strip_period(found[-1])
    return float(any(answer == _strip_period(ref) for ref in references))


def _strip_period(text: str) -> str:
    return text.strip().lower().removesuffix(".").strip()


def intersection_over_union(response: str, references: Sequence[str]) -> float:
    """|R ∩ G| / |R ∪ G| of the response's comma-separated items R (after a "label: " prefix) and the
    references G, compared lower-cased, as in the official metric."""
    text = response.lower().strip()
    if ": " in text:
        text = text.split(": ", 1)[1]
    items = {item.strip() for item in text.split(", ") if item.strip()}
    gold = {ref.lower().strip() for ref in references}
    common = len(items & gold)
    union = len(items) + len(gold) - common
    return common / union if union else 0.0


def bleu(response: str, references: Sequence[str]) -> float:
    """Sentence BLEU in [0, 1] with sacrebleu (13a tokenisation, exponential smoothing, effective order).

    The paper used nltk's unsmoothed sentence_bleu on whitespace tokens, so absolute numbers differ.
    """
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True).sentence_score(response, list(references)).score / 100.0


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact(response: str, references: Sequence[str]) -> float:
    """SQuAD exact match: 1 if the normalised response equals a normalised reference."""
    return float(any(normalize_answer(response) == normalize_answer(ref) for ref in references))


def squad_f1(response: str, references: Sequence[str]) -> float:
    """SQuAD token F1 (official v2.0 script): the best F1 of the normalised tokens over the references."""
    return max(
        (_f1(normalize_answer(ref).split(), normalize_answer(response).split()) for ref in references), default=0.0
    )


def _f1(gold: list[str], pred: list[str]) -> float:
    if not gold or not pred:  # a no-answer reference: right only if the prediction is empty too
        return float(gold == pred)
    same = sum((collections.Counter(gold) & collections.Counter(pred)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "bleu": bleu,
    "intersection_over_union": intersection_over_union,
    "matching_any": matching_any,
    "not_matching_any": not_matching_any,
    "matching_any_exact": matching_any_exact,
    "squad": squad_f1,
    "exact_match": squad_exact,
}


# ---------------------------------------------------------------- data
@dataclass(frozen=True)
class Turn:
    role: str
    text: str
    reference: tuple[str, ...] | None = None
    metric: str | None = None


@dataclass(frozen=True)
class Conversation:
    category: str
    conversation_id: str
    turns: tuple[Turn, ...]


def _turn(raw: dict, where: str) -> Turn:
    role = raw.get("role")
    if role not in ("user", "assistant") or "text" not in raw:
        raise ValueError(f"{where}: a turn needs role user|assistant and text, got keys {sorted(raw)}")
    ref, metric = raw.get("evaluation_reference"), raw.get("evaluation_metric")
    if isinstance(ref, str):
        ref = [ref]
    if ref is not None and metric not in METRICS:
        raise ValueError(f"{where}: unknown evaluation_metric {metric!r}; known: {', '.join(sorted(METRICS))}")
    return Turn(role, str(raw["text"]), tuple(str(r) for r in ref) if ref is not None else None, metric)


def load_conversations(path: str | Path, categories: Sequence[str] | None = None) -> list[Conversation]:
    """Every conversation of a file in an official layout (see the module docstring), in file order,
    optionally only those of `categories`."""
    path = Path(path).expanduser()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        data = json.loads(text)
        if isinstance(data, dict):  # dataset.json: task -> conversation id -> turns
            records = [
                {"category": task, "conversation_id": cid, "turns": turns}
                for task, convs in data.items()
                for cid, turns in convs.items()
            ]
        else:
            records = data
    conversations = []
    for rec in records:
        where = f"{path} {rec.get('category')}/{rec.get('conversation_id')}"
        turns = tuple(_turn(t, where) for t in rec["turns"])
        if not any(t.role == "assistant" for t in turns):
            raise ValueError(f"{where}: a conversation needs at least one assistant turn")
        conversations.append(Conversation(str(rec["category"]), str(rec["conversation_id"]), turns))
    if categories:
        unknown = sorted(set(categories) - {c.category for c in conversations})
        if unknown:
            raise ValueError(f"{path} has no conversations of categories {unknown}")
        conversations = [c for c in conversations if c.category in set(categories)]
    if not conversations:
        raise ValueError(f"{path} holds no conversations")
    return conversations


# ---------------------------------------------------------------- env
@ENVS.register("multiturn_instruct")
class MultiTurnInstruct:
    """The model answers every assistant turn of a conversation; reward = the turn's metric."""

    def __init__(
        self,
        data_path: str | None = None,
        eval_data_path: str | None = None,
        categories: Sequence[str] | None = None,
        ground_truth_context: bool = False,
        turn_window: int | None = None,
        success_threshold: float = 0.5,
        max_steps: int = 50,
        eval_seed_offset: int = _EVAL_SEED_OFFSET,
        task: str = "",
    ):
        if not data_path:
            raise ConfigError(_MISSING_DATA)
        cats = list(categories) if categories else None
        self.train = load_conversations(data_path, cats)
        self.eval = load_conversations(eval_data_path, cats) if eval_data_path else self.train
        self.ground_truth_context = bool(ground_truth_context)
        self.turn_window = turn_window
        self.success_threshold = float(success_threshold)
        self.max_steps = int(max_steps)
        self.eval_seed_offset = int(eval_seed_offset)
        self.task = task
        self._conv: Conversation | None = None
        self._done = False

    @staticmethod
    def check_config(cfg) -> str | None:
        """What is wrong with an env config, in one sentence, or None: run before any model loads."""
        problem = check_data_files(cfg, _MISSING_DATA, "the benchmark's dataset.json")
        if problem:
            return problem
        unknown = sorted(set(cfg.get("categories") or ()) - set(CATEGORIES))
        if unknown:
            return f"env.categories has unknown {unknown}; the categories are {', '.join(CATEGORIES)}"
        window = cfg.get("turn_window")
        if window is not None and window < 1:
            return f"env.turn_window must be >= 1 (or null for the whole conversation), got {window}"
        if not 0 <= cfg.get("success_threshold", 0.5) <= 1:
            return f"env.success_threshold must be in [0, 1], got {cfg.success_threshold}"
        return None

    def vocabulary(self) -> list[str]:
        """Every word of every turn and reference, and of the task."""
        words = set(self.task.split())
        for conv in {*self.train, *self.eval}:
            for turn in conv.turns:
                words.update(turn.text.split())
                for ref in turn.reference or ():
                    words.update(ref.split())
        return sorted(words)

    def conversation(self, seed: int) -> Conversation:
        if seed >= self.eval_seed_offset:
            return self.eval[(seed - self.eval_seed_offset) % len(self.eval)]
        return self.train[seed % len(self.train)]

    def reset(self, seed: int) -> Observation:
        self._conv = self.conversation(int(seed))
        self._context: list[tuple[str, str]] = []
        self._pos, self._done, self.steps = 0, False, 0
        self._scores: list[float] = []
        self._advance()
        if self._pos >= len(self._conv.turns):
            raise ValueError(f"conversation {self._conv.conversation_id} has no assistant turn to play")
        return self._observe()

    def step(self, action: str) -> StepResult:
        if self._conv is None:
            raise RuntimeError("multiturn_instruct step() called before reset()")
        if self._done:
            raise RuntimeError("multiturn_instruct step() called after the episode ended; call reset()")
        turn = self._conv.turns[self._pos]
        self.steps += 1
        info: dict = {"category": self._conv.category}
        reward = 0.0
        if turn.reference is not None:
            reward = float(METRICS[turn.metric](action, turn.reference))
            self._scores.append(reward)
            info.update(score=reward, metric=turn.metric)
        self._context.append(("assistant", turn.text if self.ground_truth_context else action))
        self._pos += 1
        self._advance()
        if self._pos >= len(self._conv.turns) or self.steps >= self.max_steps:
            self._done = True
            mean = sum(self._scores) / len(self._scores) if self._scores else 0.0
            info.update(success=bool(self._scores) and mean >= self.success_threshold, conversation_score=mean)
            if self._pos < len(self._conv.turns):
                info["truncated"] = True
        return StepResult(self._observe(), reward, self._done, info)

    def _advance(self) -> None:
        """Move to the next assistant turn the model must write, collecting the turns before it."""
        turns = self._conv.turns
        while self._pos < len(turns):
            turn = turns[self._pos]
            if turn.role == "assistant" and (turn.reference is not None or not self.ground_truth_context):
                return
            self._context.append((turn.role, turn.text))  # a user turn, or a gold reply shown as context
            self._pos += 1

    def _observe(self) -> Observation:
        context = self._context[-self.turn_window :] if self.turn_window else self._context
        last_user = next((text for role, text in reversed(context) if role == "user"), "")
        anchor = f"{self._conv.conversation_id}:{self._pos}"
        return Observation(last_user, anchor, dialogue=tuple(context), category=self._conv.category)


_MISSING_DATA = (
    "env=multiturn_instruct needs env.data_path=/path/to/dataset.json (the benchmark's official layout: "
    "task -> conversation id -> turns); see docs/envs/multiturn_instruct.md"
)
