from pathlib import Path

import pytest
from omegaconf import OmegaConf

from calmrl.envs import ENVS, make_env
from calmrl.envs.twenty_questions import (
    CORRECT,
    NO,
    OPENING,
    UNKNOWN,
    YES,
    GuessMyCity,
    RuleOracle,
    TwentyQuestions,
    load_words,
)
from calmrl.errors import ConfigError
from calmrl.policy import PromptTemplate

DATA = Path(__file__).parents[2] / "data" / "twenty_questions"
WORDS = str(DATA / "words.json")


def _seed_of(env, word: str) -> int:
    return [s.word for s in env.words.secrets].index(word)


def _ask(env, questions):
    return [env.step(q) for q in questions]


def test_registered_and_packaged_word_lists_load():
    assert ENVS.get("twenty_questions") is TwentyQuestions and ENVS.get("guess_my_city") is GuessMyCity
    assert len(TwentyQuestions().words.secrets) >= 30
    cities = GuessMyCity().words
    assert all(s.facts for s in cities.secrets) and "country" in cities.topics


def test_reset_is_deterministic_and_free_form():
    env = TwentyQuestions(words_path=WORDS)
    obs = env.reset(6)  # 6 mod 4 = 2
    assert env._secret.word == "strawberry"
    assert obs.text == OPENING and obs.free_form and obs.dialogue == (("user", OPENING),)
    assert obs.anchor == "nothing known" and obs.admissible is None


def test_rule_oracle_yes_no_and_reward_per_turn():
    env = TwentyQuestions(words_path=WORDS)
    env.reset(_seed_of(env, "frog"))
    results = _ask(env, ["Is it an animal?", "Is it made of metal?", "Can it jump?", "Does it live in water?"])
    assert [r.observation.text for r in results] == [YES, NO, YES, YES]
    assert [r.reward for r in results] == [-1.0] * 4 and not any(r.done for r in results)
    assert all(r.info == {"category": "animal"} for r in results)
    assert results[-1].observation.dialogue[1:3] == (("assistant", "Is it an animal?"), ("user", YES))


def test_guessing_the_word_ends_with_success_and_zero_reward():
    env = TwentyQuestions(words_path=WORDS)
    env.reset(_seed_of(env, "frog"))
    wrong = env.step("Is it a teapot?")
    assert (wrong.observation.text, wrong.reward, wrong.done) == (NO, -1.0, False)
    right = env.step("Is it a toad?")  # an alias counts
    assert (right.observation.text, right.reward, right.done) == (CORRECT, 0.0, True)
    assert right.info == {"category": "animal", "success": True}
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("Is it a frog?")
    env.reset(_seed_of(env, "ice cream"))
    assert env.step("is it ICE-CREAM").info["success"]  # multi-word name, punctuation ignored
    env.reset(_seed_of(env, "strawberry"))
    assert env.step("Is it a strawbery?").info["success"]  # a typo, within the rapidfuzz threshold
    env.reset(_seed_of(env, "teapot"))
    assert env.step("Are they teapots?").info["success"]  # a plural


def test_truncated_after_max_steps():
    env = TwentyQuestions(words_path=WORDS, max_steps=3)
    env.reset(0)
    results = _ask(env, ["Is it sweet?", "Is it cold?", "Is it red?"])
    assert [r.done for r in results] == [False, False, True]
    assert results[-1].info == {"category": "animal", "success": False, "truncated": True}
    assert sum(r.reward for r in results) == -3.0


def test_bad_action_costs_a_turn_and_teaches_nothing():
    env = TwentyQuestions(words_path=WORDS)
    env.reset(0)
    res = env.step("  ?! ")
    assert res.info["invalid"] and res.reward == -1.0 and res.observation.text == UNKNOWN
    assert res.observation.anchor == "nothing known"
    assert env.step("Is it purple and spotty?").observation.text == UNKNOWN  # nothing in the list matches
    with pytest.raises(RuntimeError, match="before reset"):
        TwentyQuestions(words_path=WORDS).step("Is it a frog?")


def test_anchor_is_the_set_of_facts_in_any_order_or_wording():
    env = TwentyQuestions(words_path=WORDS)
    seed = _seed_of(env, "frog")
    env.reset(seed)
    a = _ask(env, ["Is it an animal?", "Is it sweet?"])[-1].observation.anchor
    env.reset(seed)
    b = _ask(env, ["is it sweet", "Is it some kind of animal?"])[-1].observation.anchor
    assert a == b == "animal=yes; sweet=no"
    env.reset(seed)
    assert _ask(env, ["Is it an animal?"])[-1].observation.anchor != a


def test_guess_my_city_answers_free_text():
    env = GuessMyCity(words_path=WORDS)  # the test list has topics and facts too
    env.reset(_seed_of(env, "frog"))
    assert env.step("What colour is it?").observation.text == "green."
    assert env.step("Where does it live?").observation.text == "ponds."
    assert env.step("Is it green?").observation.text == YES
    assert env.step("Is it red?").observation.text == NO
    packaged = GuessMyCity()
    packaged.reset(_seed_of(packaged, "Barcelona"))
    replies = [
        packaged.step(q).observation.text for q in ["Where is it?", "Do they speak Spanish?", "Is it a capital?"]
    ]
    assert replies == ["Spain.", YES, NO]
    assert packaged.step("Is it Barcelona?").info == {"category": "Europe", "success": True}


def test_text_word_list_knows_only_guesses():
    words = load_words(DATA / "words.txt")
    assert [s.word for s in words.secrets] == ["frog", "teapot", "strawberry"]
    env = TwentyQuestions(words_path=str(DATA / "words.txt"))
    env.reset(1)
    assert env.step("Is it an animal?").observation.text == UNKNOWN
    assert env.step("Is it a teapot?").info["success"]


def test_oracle_is_pluggable_and_judge_is_a_clear_error():
    class AlwaysNo:
        def answer(self, secret, question):
            from calmrl.envs.twenty_questions import Reply

            return Reply(NO, question.lower())

    env = TwentyQuestions(words_path=WORDS)
    env.oracle = AlwaysNo()
    env.reset(0)
    assert env.step("Is it an animal?").observation.text == NO
    assert env.step("Is it a frog?").info["success"]  # guesses are the env's, whatever the oracle
    with pytest.raises(ConfigError, match="oracle=judge needs env.judge.backend=openai"):
        TwentyQuestions(oracle="judge")  # the LLM oracle needs a judge (tests/unit/envs/test_twenty_questions_judge.py)
    assert "oracle=judge" in TwentyQuestions.check_config(OmegaConf.create({"oracle": "judge", "words_path": None}))
    bad = OmegaConf.create({"oracle": "rule", "words_path": "/nope.json"})
    assert "words_path=/nope.json is not a file" in GuessMyCity.check_config(bad)
    bad = OmegaConf.create({"oracle": "rule", "words_path": None, "match_threshold": 0})
    assert "match_threshold must be in (0, 100]" in GuessMyCity.check_config(bad)
    assert TwentyQuestions.check_config(OmegaConf.create({"oracle": "rule", "words_path": WORDS})) is None
    assert isinstance(RuleOracle(load_words(WORDS)).answer(env._secret, "Is it sweet?").text, str)


def test_make_env_and_vocabulary_cover_the_prompt():
    env = make_env(OmegaConf.create({"name": "twenty_questions", "words_path": WORDS, "max_steps": 20}))
    words = set(env.vocabulary())
    obs = env.reset(0)
    prompt = PromptTemplate("plain").build(env.task, [], obs)
    assert set(prompt.split()) <= words | set(PromptTemplate.vocabulary())
    assert {YES, NO, *UNKNOWN.split(), *CORRECT.split()} <= words  # every reply the oracle gives
    assert {"frog", "toad", "teapot", "ice", "cream", "?"} <= words
