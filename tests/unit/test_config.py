import pytest
from hydra import compose, initialize_config_dir

from calmrl.cli import CONFIG_DIR
from calmrl.config import validate
from calmrl.errors import ConfigError


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
        ("algo.dual_clip=0.5", "algo.dual_clip must be > 1"),
        ("algo.entropy_coef=-0.1", "algo.entropy_coef must be >= 0"),
        ("algo.penalty_rule=row", "set algo.episode_stats=step_rows"),
        # validate() checks every group's field ranges, not only the algo's
        ("rollout.generation_batch_size=0", "rollout.generation_batch_size must be >= 1, got 0"),
        ("learner.weight_decay=-1", "learner.weight_decay must be >= 0, got -1"),
        ("cluster.num_threads=0", "cluster.num_threads must be >= 1 or null, got 0"),
        ("logger.table_every=0", "logger.table_every must be >= 1, got 0"),
        ("trainer.record_rollouts=-1", "trainer.record_rollouts must be >= 0, got -1"),
        ("trainer.record_budget_mb=0", "trainer.record_budget_mb must be > 0, got 0"),
    ],
)
def test_validate_rejects_with_the_fix(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(make(override))


def test_recording_is_refused_where_no_rollouts_are_sampled(tmp_path):
    validate(make("trainer.record_rollouts=5"))
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(ConfigError, match="samples no rollouts to record"):
        validate(make("algo=dpo", f"data={tmp_path / 'pairs.jsonl'}", "trainer.record_rollouts=1"))
    with pytest.raises(ConfigError, match="records LLM rollouts"):
        validate(make("algo=gmah", "env=multigrid", "trainer.record_rollouts=1"))


def test_penalty_rule_is_a_choice_of_the_group_estimators_only():
    validate(make("algo.episode_stats=step_rows", "algo.penalty_rule=row", "algo.singleton=raw"))  # verl-agent's
    with pytest.raises(Exception, match="penalty_rule"):  # ma_ppo puts the penalty in its token rewards
        make("algo=ma_ppo", "algo.penalty_rule=row")
    with pytest.raises(Exception) as err:  # a wrong value names the choices
        make("algo.penalty_rule=both")
    assert "expected one of [row, folded]" in _full_message(err.value)


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


def test_ray_placement_strategy_is_a_choice():
    with pytest.raises(Exception) as err:
        make("cluster=ray", "learner=deepspeed", "cluster.strategy=PACKED")
    assert "expected one of [PACK, SPREAD, STRICT_PACK, STRICT_SPREAD]" in _full_message(err.value)


def test_unknown_key_is_rejected():
    with pytest.raises(Exception, match="lrr"):
        make("algo.lrr=1")


@pytest.mark.parametrize(
    "experiment, algo",
    [("gigpo_alfworld_1.5b", a) for a in ("gigpo", "grpo", "rloo")]
    + [("gigpo_webshop_1.5b", a) for a in ("gigpo", "grpo")],
)
def test_gigpo_presets_follow_verl_agent_and_take_their_baselines(experiment, algo):
    cfg = make(f"experiment={experiment}", f"algo={algo}")
    assert cfg.algo.name == algo and cfg.algo.lr == 1e-6 and cfg.algo.kl_coef == 0.01
    assert (cfg.algo.dual_clip, cfg.algo.entropy_coef, str(cfg.algo.penalty_rule)) == (3.0, 0.001, "row")
    assert str(cfg.algo.episode_stats) == "step_rows" and cfg.learner.weight_decay == 0.01
    assert cfg.trainer.total_iters == 150 and cfg.trainer.eval_every == 5  # the preset's, not train.yaml's
    assert cfg.algo.get("norm_adv", "std") == ("mean" if "webshop" in experiment else "std")


def test_ma_ppo_random_repeat_range():
    with pytest.raises(ConfigError, match="algo.random_repeat must be >= 1 or null"):
        validate(make("algo=ma_ppo", "algo.random_repeat=0"))
    validate(make("algo=ma_ppo", "algo.random_repeat=null"))
