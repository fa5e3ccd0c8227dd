"""env.oracle=judge: the dialogue games' LLM oracle against an OpenAI-compatible server on 127.0.0.1.

The server is scripted: it reads the hidden word and the question from the oracle prompt and answers what the
rule oracle would, phrased the way an LLM does ("Yes, it is." / " no" / "I'm not sure." / "Answer: France"),
so the judge oracle must render the prompt, parse and normalise the answers to play the same game.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from calmrl.cli import CONFIG_DIR
from calmrl.config import validate
from calmrl.envs import make_env, oracles
from calmrl.envs.oracles import JudgeOracle, parse_yes_no
from calmrl.envs.twenty_questions import CORRECT, NO, UNKNOWN, YES, GuessMyCity, RuleOracle, TwentyQuestions
from calmrl.errors import ConfigError
from calmrl.judges import JudgeError
from calmrl.judges.local_server import LocalOpenAIServer

WORDS = str(Path(__file__).parents[2] / "data" / "twenty_questions" / "words.json")
_WORD = re.compile(r"^You are the oracle .* The hidden (?:object|city) is: (.*)\.$", re.MULTILINE)
_QUESTION = re.compile(r"^Question: (.*)$", re.MULTILINE)

QUESTIONS = {
    "twenty_questions": [
        "Is it an animal?",
        "Is it made of metal?",
        "Does it live in water?",
        "Is it sweet?",
        "Is it bigger than a house?",  # nothing in the list: "I don't know."
        "Is it green?",  # a fact value of the list: yes/no too
        "Is it a teapot?",  # a guess: the env answers, not the oracle
        "Can it jump?",
    ],
    "guess_my_city": [
        "Is it a capital?",
        "Which continent is it on?",
        "What language do they speak?",
        "Is it on a river?",
        "What is the famous landmark?",
        "Is it Paris?",
        "How many people live there?",
    ],
}


def scripted_llm(env):
    """An 'LLM' that knows the word list: the rule oracle's answer, in an LLM's wording."""
    rule = RuleOracle(env.words, 85.0)
    secrets = {s.word: s for s in env.words.secrets}

    def answer(prompt: str) -> str:
        secret = secrets[_WORD.search(prompt).group(1)]
        text = rule.answer(secret, _QUESTION.search(prompt).group(1)).text
        if text == YES:
            return " Yes, it is.\nQuestion: Is it red?\nAnswer: No"  # a completion runs on: first line only
        if text == NO:
            return " no"
        if text == UNKNOWN:
            return " I'm not sure."
        return f" Answer: {text.rstrip('.')}\n"

    return answer


def judge_cfg(server, cache_path, **kw):
    cfg = {
        "backend": "openai",
        "model": "oracle-llm",
        "base_url": server.base_url,
        "api_key_env": None,
        "timeout_s": 5.0,
        "max_retries": 0,
        "backoff_s": 0.0,
        "cache_path": None if cache_path is None else str(cache_path),
        "on_error": "fail",
    }
    return {**cfg, **kw}


@pytest.fixture(autouse=True)
def fresh_judges(monkeypatch, tmp_path):
    """No judge shared across tests, and never the user's ~/.cache."""
    monkeypatch.setattr(oracles, "_SHARED", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def play(env, seed, questions):
    env.reset(seed)
    out = []
    for q in questions:
        r = env.step(q)
        out.append((r.observation.text, r.reward, r.done, r.info.get("success", False)))
        if r.done:
            break
    return out


@pytest.mark.parametrize("game", [TwentyQuestions, GuessMyCity])
def test_judge_oracle_plays_the_same_game_as_the_rule_oracle(game, tmp_path):
    words = WORDS if game is TwentyQuestions else None
    rule_env = game(words_path=words)
    questions = QUESTIONS[game.game]
    with LocalOpenAIServer(answer=scripted_llm(rule_env)) as server:
        env = game(words_path=words, oracle="judge", judge=judge_cfg(server, tmp_path / "c.sqlite"))
        assert isinstance(env.oracle, JudgeOracle)
        replies, masked = set(), 0
        for seed, secret in enumerate(rule_env.words.secrets):
            expected = play(rule_env, seed, questions)
            # the judge oracle never names the hidden city (the rule oracle repeats the list's facts verbatim)
            hidden = [(never_named(text, secret), *rest) for text, *rest in expected]
            masked += hidden != expected
            assert play(env, seed, questions) == hidden, secret.word
            replies |= {text for text, *_ in hidden}
        assert server.prompts >= len(questions) - 1  # the oracle was asked (guesses never reach it)
    assert {YES, NO, CORRECT} <= replies  # the yes/no paths and the env's guess handling were exercised
    if game is TwentyQuestions:
        assert UNKNOWN in replies and masked == 0
    else:  # free text: countries, languages, landmarks, populations; "the Tokyo Tower." -> "the it Tower."
        assert len(replies - {YES, NO, UNKNOWN, CORRECT}) >= 10 and masked >= 1


def never_named(text, secret):
    for name in secret.names:
        text = re.sub(rf"\b{re.escape(name)}\b", "it", text, flags=re.IGNORECASE)
    return text


def test_prompt_carries_the_hidden_word_and_the_question(tmp_path):
    seen = []
    with LocalOpenAIServer(answer=lambda p: seen.append(p) or "Yes") as server:
        env = TwentyQuestions(words_path=WORDS, oracle="judge", judge=judge_cfg(server, tmp_path / "c.sqlite"))
        env.reset(0)  # frog
        assert env.step("Is it green?").observation.text == YES
        custom = TwentyQuestions(
            words_path=WORDS,
            oracle="judge",
            judge=judge_cfg(server, tmp_path / "c.sqlite"),
            oracle_prompt="Secret {word} ({category}). Q: {question} A:",
        )
        custom.reset(0)
        custom.step("Is it green?")
    assert "The hidden object is: frog." in seen[0] and "Question: Is it green?" in seen[0]
    assert seen[1] == "Secret frog (animal). Q: Is it green? A:"


def test_a_cached_answer_costs_no_request(tmp_path):
    cache = tmp_path / "oracle.sqlite"
    with LocalOpenAIServer(answer=scripted_llm(TwentyQuestions(words_path=WORDS))) as server:
        env = TwentyQuestions(words_path=WORDS, oracle="judge", judge=judge_cfg(server, cache))
        env.reset(0)
        assert env.step("Is it an animal?").observation.text == YES
        assert server.requests == 1 and cache.is_file()
        env.reset(0)  # the same question about the same word: from the cache
        assert env.step("Is it an animal?").observation.text == YES
        assert server.requests == 1
        oracles._SHARED.clear()  # a later run (a new judge) on the same cache file pays nothing either
        again = TwentyQuestions(words_path=WORDS, oracle="judge", judge=judge_cfg(server, cache))
        again.reset(0)
        assert again.step("Is it an animal?").observation.text == YES
        assert server.requests == 1 and again.oracle.judge.take_stats()["cache_hits"] == 1
        again.reset(1)  # another hidden word is another prompt
        assert again.step("Is it an animal?").observation.text == NO
        assert server.requests == 2


def test_default_cache_lives_under_xdg_cache_home(tmp_path):
    with LocalOpenAIServer(answer=lambda p: "no") as server:
        env = TwentyQuestions(words_path=WORDS, oracle="judge", judge=judge_cfg(server, None))
        env.reset(0)
        env.step("Is it a tool?")
    assert (tmp_path / "xdg" / "calmrl" / "judge_cache.sqlite").is_file()


def test_a_hanging_judge_with_on_error_zero_does_not_end_the_episode(tmp_path):
    with LocalOpenAIServer(answer=lambda p: "Yes", hang=True) as server:
        cfg = judge_cfg(server, tmp_path / "c.sqlite", timeout_s=0.2, max_retries=1, on_error="zero")
        env = TwentyQuestions(words_path=WORDS, oracle="judge", judge=cfg)
        env.reset(0)  # frog
        r = env.step("Is it an animal?")
        assert (r.observation.text, r.reward, r.done) == (UNKNOWN, -1.0, False)
        assert r.info["oracle_failed"] is True and env.oracle.failures == 1
        assert r.observation.anchor == "nothing known"  # nothing was learned
        assert server.requests == 2  # tried 1 + max_retries times
        assert env.oracle.judge.take_stats()["failures"] == 1
        won = env.step("Is it a frog?")  # guesses need no oracle: the game goes on and can be won
        assert won.done and won.info["success"]

        failing = TwentyQuestions(
            words_path=WORDS, oracle="judge", judge={**cfg, "on_error": "fail", "cache_path": str(tmp_path / "f")}
        )
        failing.reset(0)
        with pytest.raises(JudgeError, match="on_error=zero"):
            failing.step("Is it an animal?")


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        (" Yes, it is.", True),
        ("YES", True),
        ("Answer: yes", True),
        ("\n\n No.\nQuestion: x", False),
        ("Nope", False),
        ("I'm not sure.", None),
        ("Not sure", None),
        ("No idea", None),
        ("Maybe", None),
        ("", None),
        ("The answer is unclear", None),
    ],
)
def test_yes_no_parsing(text, verdict):
    assert parse_yes_no(text) is verdict


def test_free_text_answers_are_normalised_and_never_name_the_city():
    secret = GuessMyCity().words.secrets[0]  # Paris
    reply = JudgeOracle._free_text_reply
    assert reply(' "Answer: France"\nQuestion: more', secret) == "France."
    assert reply("yes", secret) == YES and reply("No, it is not.", secret) == NO
    assert reply("I don't know", secret) == UNKNOWN and reply("  ", secret) == UNKNOWN
    assert reply("Paris is on the Seine", secret) == "it is on the Seine."
    assert reply("No, it is in Asia, far from paris.", secret) == "No, it is in Asia, far from it."
    assert len(reply("word " * 100, secret)) <= oracles.MAX_ANSWER_CHARS + 1


def test_config_composes_validates_and_builds_the_judge_oracle(tmp_path):
    overrides = ["run_name=t", "env=guess_my_city", "env.oracle=judge"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
        with pytest.raises(ConfigError, match="env.judge.model"):
            validate(cfg)
        cfg = compose("train", overrides=[*overrides, "env.judge.model=m", f"env.judge.cache_path={tmp_path}/c"])
    validate(cfg)
    env = make_env(cfg.env)
    assert isinstance(env.oracle, JudgeOracle) and env.oracle.answers == "free_text"
    assert env.oracle._judge is None  # nothing is built or connected until the first question
    assert str(env.oracle.cfg.base_url) == "http://127.0.0.1:8000/v1" and env.oracle.cfg.on_error == "zero"

    def problem(**kw):
        base = {"oracle": "judge", "words_path": None, "judge": {"backend": "openai", "model": "m"}}
        return TwentyQuestions.check_config(OmegaConf.create({**base, **kw}))

    assert problem() is None
    assert "backend=oracle" in problem(judge={"backend": "oracle"})
    assert "{answer}" in problem(oracle_prompt="{word} {question} {answer}")
    assert "must contain {word}" in problem(oracle_prompt="Question: {question}")
    assert "env.judge.timeout_s" in problem(judge={"backend": "openai", "model": "m", "timeout_s": 0})
    assert "not a valid judge config" in problem(judge={"backend": "openai", "model": "m", "nope": 1})
    with pytest.raises(ConfigError, match="oracle=judge needs"):
        TwentyQuestions(oracle="judge", judge={"backend": "oracle"})
