from calmrl.envs.base import Observation
from calmrl.policy import PromptTemplate

OBS = Observation(text="goal 1 north . wall none .", anchor="1,1,0", admissible=("north", "south"))


def test_plain_prompt_has_task_history_and_actions():
    t = PromptTemplate("plain", history_len=1)
    history = [("goal 2 north .", "south"), ("goal 3 north .", "north")]
    p = t.build("reach the goal .", history, OBS)
    assert p == (
        "task : reach the goal . history : goal 3 north . -> north now : goal 1 north . wall none . "
        "actions : north south action :"
    )


def test_plain_prompt_without_history():
    p = PromptTemplate("plain", history_len=0).build("reach the goal .", [("a", "b")], OBS)
    assert "history" not in p


def test_plain_parse_is_a_format_check():
    t = PromptTemplate("plain")
    assert t.parse("north", OBS.admissible) == "north"
    assert t.parse(" North \nblah", OBS.admissible) == "north"
    assert t.parse("east", OBS.admissible) is None
    assert t.parse("north south", OBS.admissible) is None
    assert t.parse("", OBS.admissible) is None
    assert t.parse("anything", None) == "anything"


def test_tagged_prompt_and_parse():
    t = PromptTemplate("tagged", history_len=2)
    p = t.build("reach the goal .", [("o1", "a1"), ("o2", "a2"), ("o3", "a3")], OBS)
    assert "Observation 2: o2" in p and "Observation 3: o3" in p and "o1" not in p
    assert "step 4" in p and "'north', 'south'" in p
    assert t.parse("<think>go up</think><action>north</action>", OBS.admissible) == "north"
    assert t.parse("<action>north</action>", OBS.admissible) is None  # no reasoning block
    assert t.parse("<think>x</think>north", OBS.admissible) is None
    assert t.parse("<think>x</think><action>north</action><action>south</action>", OBS.admissible) is None


def test_vocabulary_covers_plain_prompt_words():
    t = PromptTemplate("plain", history_len=2)
    p = t.build("reach the goal .", [("goal 1 north .", "north")], OBS)
    env_words = set("reach the goal . 1 north wall none south".split())
    assert set(p.split()) <= env_words | set(PromptTemplate.vocabulary())
