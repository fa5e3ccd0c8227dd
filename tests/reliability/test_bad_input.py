"""Bad input, pointed at an existing run: malformed values, unknown groups, missing data paths, corrupt
checkpoints, a policy path with no weights. Each is ONE line `calmrl: error: ...` that names the fix, exit
code 2, and every file of the run keeps its bytes and its mtime."""

from __future__ import annotations

import shutil

import pytest
from reliability_support import FAST, assert_one_error_line, calmrl, snapshot

RUN = "target"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A finished 2-iteration run `runs/target` (checkpoints 1 and 2), and `runs/broken`: a copy whose every
    checkpoint has a truncated safetensors file."""
    root = tmp_path_factory.mktemp("bad_input")
    calmrl("train", *FAST, "trainer.total_iters=2", "trainer.checkpoint_every=1", f"run_name={RUN}", cwd=root)
    broken = root / "runs" / "broken"
    shutil.copytree(root / "runs" / RUN, broken)
    for weights in (broken / "checkpoints").glob("step_*/policy/model.safetensors"):
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])  # a write cut short
    (root / "no_weights").mkdir()
    (root / "no_weights" / "config.json").write_text('{"model_type": "qwen2"}')
    (root / "broken.jsonl").write_text(BROKEN_JSONL)
    return root


BROKEN_JSONL = '{"question": "1 + 1 ?", "answer": "#### 2"}\n{"question": "2 + 2 ?", \n'


def _train(*overrides: str) -> tuple[str, ...]:
    return ("train", *FAST, "trainer.total_iters=3", f"run_name={RUN}", *overrides)


CASES = {
    # malformed values
    "out of range": (_train("rollout.temperature=0"), ["rollout.temperature must be > 0, got 0.0"]),
    "wrong type": (_train("algo.lr=abc"), ["algo.lr=abc", "could not be converted to Float"]),
    "bad enum": (_train("algo.norm_adv=median"), ["algo.norm_adv=median", "expected one of [std, mean]"]),
    "unparsable override": (_train("algo.lr=["), ["cannot parse override 'algo.lr=['"]),
    "unknown key": (_train("algo.learning_rate=0.1"), ["algo.learning_rate", "not in 'GRPOConfig'"]),
    # unknown groups / options
    "unknown algo": (_train("algo=nope"), ["Could not find 'algo/nope'", "Available options in 'algo': ", "grpo"]),
    "unknown env": (_train("env=nope"), ["Could not find 'env/nope'", "gridworld"]),
    "unknown env name": (_train("env.name=nope"), ["unknown env 'nope'; known envs: ", "gridworld"]),
    # missing data paths
    "missing policy path": (_train("policy.path=/nonexistent/model"), ["policy.path=/nonexistent/model", "give a"]),
    "missing critic path": (
        _train("algo=ppo", "algo.critic_path=/nonexistent/critic"),
        ["algo.critic_path=", "leave it unset"],
    ),
    "missing eval checkpoint": (("eval", "checkpoint=/nonexistent/run"), ["checkpoint=/nonexistent/run", "give a"]),
    "missing inspect checkpoint": (("inspect", "checkpoint=/nonexistent/run"), ["no valid checkpoint", "give a"]),
    "missing compare run": (("compare", "runs=[/nonexistent/run]"), ["/nonexistent/run is not a directory"]),
    # corrupt checkpoints: every checkpoint of runs/broken is truncated
    "corrupt checkpoints (train)": (
        ("train", *FAST, "trainer.total_iters=3", "run_name=broken"),
        ["is valid", "run_name=<new>", "nothing was overwritten"],
    ),
    "corrupt checkpoints (eval)": (("eval", "checkpoint=runs/broken"), ["no valid checkpoint"]),
    # a corrupt data file (its second record is cut short)
    "corrupt data file": (_train("env=math", "env.data_path=broken.jsonl"), ["env=math: ", "broken.jsonl:2: "]),
    # a policy path with no weights
    "policy without weights": (_train("policy.path=no_weights"), ["has no weights"]),
    # a finished run and resume=never
    "resume never": (_train("resume=never"), ["already holds checkpoints", "resume=auto", "run_name=<new>"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_overwrites_nothing(project, case):
    args, needles = CASES[case]
    runs = project / "runs"
    dirs = (runs / RUN, runs / "broken")
    logs = {d.name: (d / "train.log").read_bytes() for d in dirs}
    before = {d.name: snapshot(d, skip=("train.log",)) for d in dirs}
    proc = calmrl(*args, cwd=project, check=False, timeout=120)
    assert_one_error_line(proc, *needles)
    assert {d.name: snapshot(d, skip=("train.log",)) for d in dirs} == before, f"{case}: files changed"
    for d in dirs:  # the run's log may record the refused attempt (its warnings), but only by appending
        assert (d / "train.log").read_bytes().startswith(logs[d.name])
    assert sorted(p.name for p in runs.iterdir()) == ["broken", RUN], "a rejected command left a directory"


FRESH = {
    "train, out of range": ("train", *FAST, "rollout.temperature=0"),
    "train, corrupt data file": ("train", *FAST, "env=math", "env.data_path=broken.jsonl"),
    "eval, missing checkpoint": ("eval", "checkpoint=/nonexistent/run"),
}


@pytest.mark.parametrize("case", list(FRESH))
def test_a_rejected_fresh_command_leaves_no_directory(tmp_path, case):
    """Hydra makes a job's directory and log before the command checks its input; a rejected command removes
    them (and the runs/ it made), so a typo leaves nothing to clean up."""
    (tmp_path / "broken.jsonl").write_text(BROKEN_JSONL)
    proc = calmrl(*FRESH[case], cwd=tmp_path, check=False, timeout=120)
    assert_one_error_line(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jsonl"], f"{case} left files behind"
