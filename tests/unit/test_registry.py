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
