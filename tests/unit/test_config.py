import pytest
from hydra import compose, initialize_config_dir

from calmrl.cli import CONFIG_DIR
from calmrl.config import ConfigError, validate


def make(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["run_name=t", *overrides])


def test_default_composes_and_validates():
    cfg = make()
    assert (cfg.env.name, cfg.policy.name, cfg.shaper.name, cfg.algo.name) == (
        "gridworld",
        "tiny",
        "none",
        "grpo",
    )
    assert (cfg.rollout.name, cfg.learner.name, cfg.cluster.name, cfg.logger.name) == (
        "hf",
        "torch",
        "local",
        "console",
    )
    assert cfg.rollout.max_new_tokens == cfg.policy.max_new_tokens
    validate(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("algo.lr=0", "algo.lr must be > 0"),
        ("algo.clip_ratio=1.5", "algo.clip_ratio must be in (0, 1)"),
        ("rollout.group_size=1", "rollout.group_size must be >= 2"),
        ("trainer.total_iters=0", "trainer.total_iters must be >= 1"),
        ("policy.template.history_len=-1", "policy.template.history_len must be >= 0"),
        ("policy.path=/nonexistent/model", "is not a directory"),
    ],
)
def test_validate_rejects_with_the_fix(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(make(override))


def _full_message(exc: BaseException) -> str:
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def test_type_errors_fail_at_compose_time():
    with pytest.raises(Exception) as err:
        make("algo.lr=abc")
    assert "could not be converted to Float" in _full_message(err.value)
    with pytest.raises(Exception) as err:
        make("policy.template.format=json")
    assert "expected one of [plain, tagged]" in _full_message(err.value)


def test_unknown_key_is_rejected():
    with pytest.raises(Exception, match="lrr"):
        make("algo.lrr=1")
