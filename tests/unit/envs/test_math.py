import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from calmrl.envs import ENVS, make_env
from calmrl.envs.math import (
    MathEnv,
    is_correct,
    last_boxed,
    load_problems,
    split_steps,
)
from calmrl.errors import ConfigError
from calmrl.policy import PromptTemplate

DATA = Path(__file__).parents[2] / "data" / "math"
GSM8K, MATH = str(DATA / "gsm8k.jsonl"), str(DATA / "math.jsonl")


def test_split_steps_on_blank_lines():
    text = "First, 3 + 4 = 7.\n\nThen 7 * 2 = 14.\n  \n\n\nSo the answer is 14.\n"
    assert split_steps(text) == ["First, 3 + 4 = 7.", "Then 7 * 2 = 14.", "So the answer is 14."]
    assert split_steps("one line\nstill one step") == ["one line\nstill one step"]
    assert split_steps("a\r\n\r\nb") == ["a", "b"]
    assert split_steps("   \n\n  ") == []


def test_last_boxed_matches_nested_braces():
    assert last_boxed("so $\\boxed{\\frac{3}{4}}$ and done") == "\\frac{3}{4}"
    assert last_boxed("\\boxed{1} then \\boxed{2}") == "2"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{\\frac{1}{2}") is None


def test_loads_both_layouts():
    gsm = load_problems(GSM8K)
    assert len(gsm) == 10
    assert gsm[0].answer == "7" and gsm[0].category == "gsm8k"
    assert gsm[8].answer == "1200"  # thousands separators removed
    math = load_problems(MATH)
    assert math[0].answer == "\\frac{3}{4}" and math[0].category == "Prealgebra"


def test_bad_record_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a #### 1"}\n{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*####"):
        load_problems(bad)
    bad.write_text('{"prompt": "q"}\n')
    with pytest.raises(ValueError, match="expected GSM8K keys"):
        load_problems(bad)


@pytest.mark.parametrize(
    "response,gold,ok",
    [
        ("3 + 4 = 7.\n\n#### 7", "7", True),
        ("The answer is 1,200.", "1200", True),
        ("So the answer is $\\boxed{0.75}$.", "\\frac{3}{4}", True),
        ("$\\boxed{5\\sqrt{2}}$", "5\\sqrt{2}", True),
        ("\\boxed{1 + 2x + x^2}", "x^2+2x+1", True),
        ("I think it is 8.", "7", False),
        ("", "7", False),
    ],
)
def test_is_correct_uses_math_verify(response, gold, ok):
    assert is_correct(response, gold) is ok


def test_reset_step_reward_and_termination():
    env = MathEnv(data_path=GSM8K)
    obs = env.reset(3)
    assert obs.text.startswith("A shirt costs 20 dollars")
    assert obs.free_form and obs.dialogue == (("user", obs.text),)
    assert obs.anchor == "train:3" and obs.admissible is None
    res = env.step("The discount is 5.\n\nSo the price is 15 dollars.")
    assert (res.reward, res.done) == (1.0, True)
    assert res.info == {"success": True, "category": "gsm8k", "steps": 2, "has_answer": True}
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("15")
    env.reset(3)
    res = env.step("It is 16.")  # a wrong answer: reward 0, still one step
    assert (res.reward, res.done, res.info["success"]) == (0.0, True, False)


def test_bad_action_is_a_wrong_answer():
    env = MathEnv(data_path=MATH)
    env.reset(0)
    res = env.step("\\boxed{\\frac{3}{")  # unparseable: no answer found
    assert res.reward == 0.0 and res.done and res.info["category"] == "Prealgebra"
    with pytest.raises(RuntimeError, match="before reset"):
        MathEnv(data_path=MATH).step("x")


def test_seeds_index_problems_and_eval_uses_eval_file():
    env = MathEnv(data_path=GSM8K, eval_data_path=MATH, eval_seed_offset=1000)
    assert env.reset(2).text == env.reset(12).text == load_problems(GSM8K)[2].question
    assert env.reset(1001).text == load_problems(MATH)[1].question
    assert env.reset(1001).anchor == "eval:1"
    same = MathEnv(data_path=GSM8K, eval_seed_offset=1000)
    assert same.reset(1004).text == load_problems(GSM8K)[4].question  # eval defaults to the training file


def test_make_env_passes_eval_seed_offset_and_checks_config():
    cfg = OmegaConf.create(
        {"name": "math", "data_path": GSM8K, "eval_data_path": MATH, "eval_seed_offset": 50, "max_steps": 1}
    )
    env = make_env(cfg)
    assert isinstance(env, MathEnv) and ENVS.get("math") is MathEnv and env.eval_seed_offset == 50
    assert "needs env.data_path" in MathEnv.check_config(OmegaConf.create({"data_path": None}))
    bad = OmegaConf.create({"data_path": GSM8K, "eval_data_path": "/nope.jsonl"})
    assert "eval_data_path=/nope.jsonl is not a file" in MathEnv.check_config(bad)
    assert MathEnv.check_config(OmegaConf.create({"data_path": GSM8K, "eval_data_path": None})) is None
    with pytest.raises(ConfigError, match="needs env.data_path"):
        MathEnv()


def test_vocabulary_covers_prompt_and_solutions():
    env = MathEnv(data_path=GSM8K, eval_data_path=MATH)
    words = set(env.vocabulary())
    prompt = PromptTemplate("plain").build(env.task, [], env.reset(0))
    assert set(prompt.split()) <= words | set(PromptTemplate.vocabulary())
    assert "$\\boxed{\\frac{3}{4}}$." in words and "84" in words and "7" in words


def write_records(path, records, array=False):
    text = json.dumps(records, indent=2) if array else "\n".join(json.dumps(r) for r in records) + "\n"
    path.write_text(text)
    return str(path)


def test_loads_problems_without_an_answer(tmp_path):
    # PURE's data (a JSON array): "null" answers are withheld, the ref_answer only for success
    pure = write_records(
        tmp_path / "8k_math.json",
        [
            {"question": "What is 3 + 4?", "answer": "null", "ref_answer": "7", "level": "5"},
            {"question": "What is 2 * 5?", "answer": "10", "ref_answer": "null", "level": "3"},
        ],
        array=True,
    )
    first, second = load_problems(pure)
    assert (first.answer, first.reference, first.has_answer, first.gold) == (None, "7", False, "7")
    assert (second.answer, second.reference, second.has_answer, second.category) == ("10", None, True, "8k_math")
    mixed = write_records(
        tmp_path / "mixed.jsonl",
        [
            {"question": "q1", "answer": None},  # GSM8K layout, JSON null
            {"question": "q2", "answer": "null"},
            {"problem": "p3", "solution": "no box here"},  # MATH without \boxed{} nor answer
            {"problem": "p4", "solution": "so \\boxed{4}", "answer": "null"},  # withheld: the box is the reference
            {"problem": "p5", "solution": "so \\boxed{5}", "answer": None},  # null field: the box is the answer
        ],
    )
    problems = load_problems(mixed)
    assert [p.answer for p in problems] == [None, None, None, None, "5"]
    assert [p.reference for p in problems] == [None, None, None, "4", None]


def test_answerless_problem_earns_no_reward_and_says_so(tmp_path):
    data = write_records(
        tmp_path / "pure.json",
        [
            {"question": "What is 3 + 4?", "answer": "null", "ref_answer": "7"},
            {"question": "What is 5 + 5?", "answer": None, "ref_answer": None},
        ],
        array=True,
    )
    env = MathEnv(data_path=data)
    obs = env.reset(0)
    assert obs.anchor == "train:0"
    res = env.step("3 + 4 = 7, so \\boxed{7}")
    assert res.reward == 0.0 and res.done  # right, but a withheld answer is never rewarded
    assert res.info["success"] and res.info["has_answer"] is False  # success is measured on ref_answer
    env.reset(1)
    res = env.step("\\boxed{10}")
    assert (res.reward, res.info["success"], res.info["has_answer"]) == (0.0, False, False)  # nothing to check
    # evaluation keeps only what can be checked: problem 1 has neither answer nor ref_answer
    assert len(env.eval) == 1 and env.reset(env.eval_seed_offset + 1).text == "What is 3 + 4?"


def test_eval_file_needs_a_checkable_problem(tmp_path):
    blind = write_records(tmp_path / "blind.jsonl", [{"question": "q", "answer": None}])
    MathEnv(data_path=blind, eval_data_path=GSM8K)  # training on it is fine
    with pytest.raises(ValueError, match="no problem has an answer"):
        MathEnv(data_path=GSM8K, eval_data_path=blind)


def test_json_array_errors_name_the_record(tmp_path):
    bad = write_records(tmp_path / "bad.json", [{"question": "q", "answer": "a #### 1"}, {"prompt": "q"}], array=True)
    with pytest.raises(ValueError, match=r"bad.json\[1\]: expected GSM8K keys"):
        load_problems(bad)
