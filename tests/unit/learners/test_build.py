"""The one rule for what the policy role loads besides the policy, shared by the in-process trainer and the Ray
learner ranks (`calmrl.learners.build.reference_and_critic_paths`)."""

from pathlib import Path

from omegaconf import OmegaConf

from calmrl.algos import ALGOS
from calmrl.learners.build import reference_and_critic_paths


def paths(algo: str, **algo_cfg):
    cfg = OmegaConf.create({"kl_coef": 0.0, **algo_cfg})
    return reference_and_critic_paths(cfg, ALGOS.get(algo), "/runs/base")


def test_grpo_without_kl_loads_neither():
    assert paths("grpo") == (None, None)


def test_a_kl_term_loads_the_initial_policy_as_the_reference():
    assert paths("grpo", kl_coef=0.01) == (Path("/runs/base"), None)


def test_a_method_that_reads_ref_logprobs_loads_the_reference_without_a_kl_term():
    readers = [name for name in ALGOS.names() if ALGOS.get(name).needs_ref]
    assert readers, "no registered method reads ref_logprobs"
    for name in readers:
        assert paths(name)[0] == Path("/runs/base"), name


def test_the_critic_loads_from_critic_path_or_else_the_policy():
    assert paths("ppo") == (None, Path("/runs/base"))
    assert paths("ppo", critic_path="~/value")[1] == Path("~/value").expanduser()
    assert paths("ppo", critic_path=None)[1] == Path("/runs/base")
