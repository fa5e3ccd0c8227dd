import pytest

from calmrl.registry import Registry, RegistryError


def test_register_and_get():
    reg = Registry("algo")

    @reg.register("a")
    def a():
        return 1

    assert reg.get("a") is a
    assert reg.names() == ["a"]
    assert "a" in reg and "b" not in reg


def test_duplicate_name_raises():
    reg = Registry("algo")
    reg.register("a")(lambda: 1)
    with pytest.raises(RegistryError, match="registered twice"):
        reg.register("a")(lambda: 2)


def test_unknown_name_lists_known():
    reg = Registry("env")
    reg.register("gridworld")(object)
    reg.register("alfworld")(object)
    with pytest.raises(RegistryError) as err:
        reg.get("gridwrld")
    assert str(err.value) == "unknown env 'gridwrld'; known envs: alfworld, gridworld"


def test_builtin_registries_know_the_defaults():
    from calmrl.algos import ALGOS
    from calmrl.envs import ENVS
    from calmrl.shapers import SHAPERS

    assert "grpo" in ALGOS and "gridworld" in ENVS and "none" in SHAPERS


def test_every_algo_is_a_method_record_the_loops_read():
    """The loops branch on what a method needs (its record), never on its name."""
    from calmrl.algos import ALGOS
    from calmrl.algos.archer import ArcherState
    from calmrl.algos.grpo import grpo
    from calmrl.algos.registry import Method

    methods = {name: ALGOS.get(name) for name in ALGOS.names()}
    assert all(isinstance(m, Method) and m.name == name for name, m in methods.items())
    assert {n for n, m in methods.items() if m.offline} >= {"dpo", "dpo_treg"}
    assert {n for n, m in methods.items() if m.rollout is not None} == {"brpo"}
    assert methods["archer"].state is ArcherState and methods["ppo"].needs_critic and not methods["ppo"].needs_ref
    assert methods["reinforce_pp"].needs_ref and not methods["grpo"].needs_critic
    assert methods["grpo"].advantages is grpo  # register() hands the function back unchanged: plain public API


def test_register_records_what_the_method_needs():
    from calmrl.algos.registry import ALGOS, register

    def my_adv(batch, cfg):
        return batch

    assert register("test_record_probe", requires=("ref_logprobs",), reads_token_rewards=True)(my_adv) is my_adv
    m = ALGOS.get("test_record_probe")
    assert (m.requires, m.reads_token_rewards, m.state, m.rollout, m.offline) == (
        frozenset({"ref_logprobs"}), True, None, None, False,
    )  # fmt: skip
    assert m("b", None) == "b"
    with pytest.raises(ValueError, match="unknown requirements"):
        register("test_record_bad", requires=("critic",))
