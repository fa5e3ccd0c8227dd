"""Prompt construction and action parsing for multi-turn text environments.

A step's prompt holds the task, the last `history_len` (observation, action) pairs and the current
observation with its admissible actions. Two formats:
  - plain:  compact, space-separated words; the response's first line is the action (tiny models).
  - tagged: natural-language instructions in the style of the GiGPO prompts; the model reasons in
            <think>...</think> and answers in <action>...</action> (instruction-tuned models).
Parsing is a format check: a response that does not yield one admissible action is invalid.
"""

from __future__ import annotations

import re

from calmrl.envs.base import Observation

PLAIN_WORDS = ["task", "history", "now", "actions", "action", ":", "->", ";"]

_ACTION_TAG = re.compile(r"<action>(.*?)</action>", re.DOTALL | re.IGNORECASE)


class PromptTemplate:
    def __init__(self, format: str = "plain", history_len: int = 2, chat: bool = False, tokenizer=None):
        self.format = str(format)
        self.history_len = int(history_len)
        self.chat = bool(chat)
        self.tokenizer = tokenizer  # only needed when chat=True

    @staticmethod
    def vocabulary() -> list[str]:
        """Words the plain format adds to the env's own (for building a word-level tokenizer)."""
        return list(PLAIN_WORDS)

    def build(self, task: str, history: list[tuple[str, str]], obs: Observation) -> str:
        """history: (observation text, action text) pairs of earlier steps, oldest first."""
        recent = history[-self.history_len :] if self.history_len else []
        prompt = (
            self._plain(task, recent, obs) if self.format == "plain" else self._tagged(task, recent, obs, len(history))
        )
        if self.chat:
            prompt = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    def parse(self, response: str, admissible: tuple[str, ...] | None) -> str | None:
        """The action in `response`, or None if the response fails the format check."""
        if self.format == "plain":
            lines = response.strip().splitlines()
            action = lines[0].strip() if lines else ""
        else:
            found = _ACTION_TAG.findall(response)
            if len(found) != 1 or "<think>" not in response.lower():
                return None
            action = found[0].strip()
        if not action:
            return None
        if admissible is not None:
            by_lower = {a.lower(): a for a in admissible}
            return by_lower.get(action.lower())
        return action

    @staticmethod
    def _plain(task: str, history: list[tuple[str, str]], obs: Observation) -> str:
        parts = ["task :", task]
        if history:
            parts.append("history :")
            parts.append(" ; ".join(f"{o} -> {a}" for o, a in history))
        parts += ["now :", obs.text]
        if obs.admissible is not None:
            parts += ["actions :", " ".join(obs.admissible)]
        parts.append("action :")
        return " ".join(parts)

    @staticmethod
    def _tagged(task: str, history: list[tuple[str, str]], obs: Observation, steps_taken: int) -> str:
        lines = [f"You are an agent acting in a text environment. Your task is: {task}"]
        if history:
            lines.append(
                f"You have taken {steps_taken} step(s) so far. Your last {len(history)} observation(s) and the "
                "action you took after each:"
            )
            for i, (o, a) in enumerate(history, start=steps_taken - len(history) + 1):
                lines.append(f"[Observation {i}: {o}]  [Action {i}: {a}]")
        lines.append(f"You are now at step {steps_taken + 1}. Current observation: {obs.text}")
        if obs.admissible is not None:
            lines.append("Admissible actions now: [" + ", ".join(f"'{a}'" for a in obs.admissible) + "]")
        lines.append(
            "Think step by step about the situation inside <think> </think> tags, then give exactly one "
            "admissible action inside <action> </action> tags."
        )
        return "\n".join(lines)
