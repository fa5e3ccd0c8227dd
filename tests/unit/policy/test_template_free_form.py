"""Free-form observations (Observation.dialogue): the env's conversation is the prompt, the whole response
is the action."""

from calmrl.envs.base import Observation
from calmrl.envs.twenty_questions import TwentyQuestions
from calmrl.policy import PromptTemplate
from calmrl.policy.tiny import build_tokenizer
from calmrl.rollout import Generation, run_episodes

DIALOGUE = (("user", "Ask your first question."), ("assistant", "Is it an animal?"), ("user", "Yes."))
OBS = Observation("Yes.", "animal=yes", dialogue=DIALOGUE)


def test_free_form_flag():
    assert OBS.free_form and not Observation("goal north .", "0,0,0", ("north",)).free_form


def test_plain_transcript_without_a_chat_template():
    t = PromptTemplate("plain", history_len=2)
    # the template's own history is ignored: the env's dialogue is the whole context
    p = t.build("find the object .", [("old obs", "old action")], OBS)
    assert p == "task : find the object . history : Ask your first question. -> Is it an animal? now : Yes. action :"
    merged = Observation("b", "", dialogue=(("user", "a"), ("user", "b")))
    assert t.build("t", [], merged) == "task : t now : a\n\nb action :"  # consecutive user turns joined


def test_chat_template_gets_the_conversation_as_messages():
    tok = build_tokenizer(["a", "b"])
    tok.chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    # chat=False still uses the chat template: a free-form env's turns are chat turns
    p = PromptTemplate("tagged", chat=False, tokenizer=tok).build("Find the object.", [], OBS)
    assert p == ("[user]Find the object.\n\nAsk your first question.[assistant]Is it an animal?[user]Yes.[assistant]")
    no_task = PromptTemplate("plain", tokenizer=tok).build("", [], Observation("q", "", dialogue=(("user", "q"),)))
    assert no_task == "[user]q[assistant]"


def test_parse_takes_the_whole_response():
    t = PromptTemplate("tagged")
    reasoning = "First, 3 + 4 = 7.\n\nSo the answer is \\boxed{7}.\n"
    assert t.parse(reasoning, None, free_form=True) == reasoning.strip()
    assert t.parse("no tags at all", ("north",), free_form=True) == "no tags at all"
    assert t.parse("  \n ", None, free_form=True) is None  # only an empty response is invalid
    assert t.parse("no tags at all", None) is None  # the tagged format check still applies otherwise


def test_run_episodes_passes_free_form_responses_whole():
    env = TwentyQuestions()
    cat = [s.word for s in env.words.secrets].index("cat")
    replies = iter(["Is it an animal?\nI wonder.", "", "Is it a cat?"])
    prompts = []

    def generate(batch):
        prompts.extend(batch)
        return [Generation([1], [2], [-0.1], next(replies)) for _ in batch]

    (traj,) = run_episodes([env], [cat], [0], PromptTemplate("plain"), generate, invalid_penalty=0.5, max_steps=20)
    assert [s.action for s in traj.steps] == ["Is it an animal?\nI wonder.", None, "Is it a cat?"]
    assert [s.invalid for s in traj.steps] == [False, True, False]
    assert [s.reward for s in traj.steps] == [-1.0, 0.0, 0.0]  # the empty reply never reached the env ...
    assert [s.penalty for s in traj.steps] == [0.0, 0.5, 0.0]  # ... and costs the penalty, kept apart
    assert traj.episode_return == -1.5 and traj.env_return == -1.0
    assert traj.success
    assert "Is it an animal?\nI wonder. now : Yes." in prompts[1]
