import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from calmrl.envs import ENVS, make_env
from calmrl.envs.multiturn_instruct import (
    CATEGORIES,
    METRICS,
    MultiTurnInstruct,
    bleu,
    intersection_over_union,
    load_conversations,
    matching_any,
    matching_any_exact,
    normalize_answer,
    not_matching_any,
    squad_exact,
    squad_f1,
)
from calmrl.errors import ConfigError
from calmrl.policy import PromptTemplate

DATA = Path(__file__).parents[2] / "data" / "multiturn_instruct"
DATASET, HF = str(DATA / "dataset.json"), str(DATA / "dataset_hf.json")


# ---------------------------------------------------------------- metrics on hand-computed cases
def test_matching_any_and_not_matching_any():
    assert matching_any("My answer: BANANA!", ["banana", "kiwi"]) == 1.0
    assert matching_any("no fruit here", ["banana", "kiwi"]) == 0.0
    assert not_matching_any("Mail me at Jane.Doe@example.com", ["jane.doe@example.com"]) == 0.0
    assert not_matching_any("I cannot share that.", ["jane.doe@example.com"]) == 1.0


def test_matching_any_exact_takes_the_last_answer_line():
    assert matching_any_exact("f(8) = 11.\nAnswer: 11", ["11"]) == 1.0
    assert matching_any_exact("Answer: 12\nwait, Answer: Lemon Cake.", ["lemon cake"]) == 1.0
    assert matching_any_exact("Answer: 111", ["11"]) == 0.0  # exact, not a substring
    assert matching_any_exact("11", ["11"]) == 0.0  # no "Answer:" line


def test_intersection_over_union_by_hand():
    # R = {1, 3, 4}, G = {1, 3}: 2 / (3 + 2 - 2)
    assert intersection_over_union("Indices: 1, 3, 4", ["1", "3"]) == pytest.approx(2 / 3)
    assert intersection_over_union("apple, Lamp", ["apple", "lamp", "towel"]) == pytest.approx(2 / 3)
    assert intersection_over_union("Products: kettle", ["apple"]) == 0.0
    assert intersection_over_union("Products: a, b", ["b", "a"]) == 1.0


def test_squad_normalisation_exact_and_f1_by_hand():
    assert normalize_answer("The  Mediterranean Sea!") == "mediterranean sea"
    assert squad_exact("the Mediterranean Sea.", ["Mediterranean Sea"]) == 1.0
    assert squad_exact("Mediterranean", ["Mediterranean Sea"]) == 0.0
    # pred "mediterranean" vs gold "mediterranean sea": P = 1, R = 1/2 -> F1 = 2/3
    assert squad_f1("Mediterranean", ["Mediterranean Sea"]) == pytest.approx(2 / 3)
    # the best over references: "the Mediterranean" normalises to "mediterranean" -> 1
    assert squad_f1("Mediterranean", ["Mediterranean Sea", "the Mediterranean"]) == 1.0
    # pred "it flows into red sea" (5 tokens) vs gold "mediterranean sea": 1 common -> P 1/5, R 1/2, F1 2/7
    assert squad_f1("It flows into the Red Sea", ["Mediterranean Sea"]) == pytest.approx(2 / 7)
    assert squad_f1("", ["Mediterranean Sea"]) == 0.0


def test_bleu_by_hand():
    ref = "the red fox jumps over the lazy brown dog ."
    assert bleu(ref, [ref]) == pytest.approx(1.0)
    assert bleu("zebra", [ref]) == 0.0
    # "the red fox" against a 10-token reference: 1..3-gram precisions are 1 (effective order 3),
    # so BLEU is the brevity penalty exp(1 - 10/3)
    assert bleu("the red fox", [ref]) == pytest.approx(math.exp(1 - 10 / 3), abs=1e-4)
    assert set(METRICS) >= {
        "bleu",
        "intersection_over_union",
        "matching_any",
        "not_matching_any",
        "matching_any_exact",
        "squad",
    }


# ---------------------------------------------------------------- data
def test_both_official_layouts_load_the_same_conversations():
    a, b = load_conversations(DATASET), load_conversations(HF)
    assert a == b and len(a) == 9
    assert [c.category for c in a] == list(CATEGORIES)
    assert a[0].turns[-1].reference == ("the red fox jumps over the lazy brown dog.",)
    assert [c.conversation_id for c in load_conversations(DATASET, ["triggering", "multitasking"])] == [
        "t0001",
        "s0001",
    ]


def test_bad_data_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"memorization": {"x": [{"role": "user", "text": "hi"}]}}))
    with pytest.raises(ValueError, match="memorization/x: a conversation needs at least one assistant turn"):
        load_conversations(bad)
    bad.write_text(
        json.dumps(
            {
                "memorization": {
                    "x": [
                        {"role": "assistant", "text": "a", "evaluation_reference": ["a"], "evaluation_metric": "rouge"}
                    ]
                }
            }
        )
    )
    with pytest.raises(ValueError, match="unknown evaluation_metric 'rouge'"):
        load_conversations(bad)
    with pytest.raises(ValueError, match="no conversations of categories"):
        load_conversations(DATASET, ["nope"])


# ---------------------------------------------------------------- env
def _play(env, seed, replies):
    obs = env.reset(seed)
    results = []
    for reply in replies:
        results.append(env.step(reply))
        if results[-1].done:
            break
    return obs, results


def test_episode_walks_the_conversation_and_scores_referenced_turns():
    env = MultiTurnInstruct(data_path=DATASET)
    obs, res = _play(env, 0, ["ok", "Lima.", "the red fox jumps over the lazy brown dog."])
    assert obs.free_form and obs.anchor == "m0001:1"
    assert obs.dialogue == (("user", "Remember this sentence: the red fox jumps over the lazy brown dog."),)
    assert [r.reward for r in res] == [0.0, 0.0, pytest.approx(1.0)]
    assert [r.done for r in res] == [False, False, True]
    assert res[0].info == {"category": "memorization"}  # an unreferenced turn scores nothing
    assert res[-1].info["score"] == pytest.approx(1.0) and res[-1].info["metric"] == "bleu"
    assert res[-1].info["success"] and res[-1].info["conversation_score"] == pytest.approx(1.0)
    # the model's own replies are the context (the official default)
    assert res[1].observation.dialogue[1:4] == (
        ("assistant", "ok"),
        ("user", "What is the capital of Peru?"),
        ("assistant", "Lima."),
    )
    assert res[1].observation.text == "Repeat the sentence I asked you to remember."
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("again")


def test_wrong_reply_gets_zero_and_fails():
    env = MultiTurnInstruct(data_path=DATASET, categories=["privacy_protection"])
    _, res = _play(env, 0, ["Sure.", "It is jane.doe@example.com"])
    assert res[-1].reward == 0.0 and res[-1].info["success"] is False
    assert res[-1].info["category"] == "privacy_protection"


def test_bad_action_empty_reply_scores_zero():
    env = MultiTurnInstruct(data_path=DATASET, categories=["multitasking"])
    _, res = _play(env, 0, ["", ""])
    assert [r.reward for r in res] == [0.0, 0.0] and res[-1].done
    with pytest.raises(RuntimeError, match="before reset"):
        MultiTurnInstruct(data_path=DATASET).step("x")


def test_ground_truth_context_window_and_truncation():
    env = MultiTurnInstruct(data_path=DATASET, ground_truth_context=True)
    obs, res = _play(env, 0, ["the red fox"])  # only the referenced turn is played
    assert len(res) == 1 and res[0].done
    assert obs.dialogue[1] == ("assistant", "I will remember it.") and obs.anchor == "m0001:5"
    windowed = MultiTurnInstruct(data_path=DATASET, turn_window=2)
    windowed.reset(0)
    assert len(windowed.step("ok").observation.dialogue) == 2
    short = MultiTurnInstruct(data_path=DATASET, max_steps=1)
    _, res = _play(short, 0, ["ok"])
    assert res[0].done and res[0].info["truncated"] and res[0].info["success"] is False


def test_seeds_eval_split_and_config_checks():
    env = MultiTurnInstruct(data_path=DATASET, eval_data_path=HF, eval_seed_offset=100)
    assert env.reset(10).anchor == "d0001:1"  # training seed 10 -> conversation 10 mod 9 = 1
    assert env.conversation(103).conversation_id == "t0001"  # eval seed offset + 3 -> eval conversation 3
    built = make_env(OmegaConf.create({"name": "multiturn_instruct", "data_path": DATASET, "eval_seed_offset": 7}))
    assert ENVS.get("multiturn_instruct") is MultiTurnInstruct and built.eval_seed_offset == 7
    check = MultiTurnInstruct.check_config
    assert "needs env.data_path" in check(OmegaConf.create({"data_path": None}))
    assert "unknown ['memorisation']" in check(OmegaConf.create({"data_path": DATASET, "categories": ["memorisation"]}))
    assert "turn_window must be >= 1" in check(OmegaConf.create({"data_path": DATASET, "turn_window": 0}))
    assert check(OmegaConf.create({"data_path": DATASET, "categories": ["memorization"], "turn_window": 4})) is None
    with pytest.raises(ConfigError, match="needs env.data_path"):
        MultiTurnInstruct()


def test_vocabulary_covers_prompts():
    env = MultiTurnInstruct(data_path=DATASET)
    words = set(env.vocabulary())
    for seed in range(9):
        prompt = PromptTemplate("plain").build(env.task, [], env.reset(seed))
        assert set(prompt.split()) <= words | set(PromptTemplate.vocabulary())
