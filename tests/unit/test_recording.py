"""Rollout recordings (calmrl.recording): the file round trip, the schedule, the size budget and resuming."""

from __future__ import annotations

import logging

import pytest
import torch

from calmrl.data import build_batch
from calmrl.recording import RolloutRecorder, load_batch, recorded_iterations, save_batch


@pytest.fixture()
def batch(random_agent_trajectories):
    b = build_batch(random_agent_trajectories(seed=3), pad_token_id=0)
    b.token_rewards = torch.randn(b.response_mask.shape) * b.response_mask  # a shaper's dense rewards
    b.step_bonus = torch.rand(len(b))
    return b


def test_a_recording_reads_back_as_the_batch_it_was(batch, tmp_path):
    path = tmp_path / "rollouts" / "iter_00000007.safetensors"
    meta = {"iteration": 7, "policy_version": 6, "config": {"algo": {"name": "grpo"}}}
    size = save_batch(path, batch, meta, {"learner_logprobs": batch.old_logprobs - 0.01})
    assert size == path.stat().st_size and [p.name for p in path.parent.iterdir()] == [path.name]  # no temp left
    loaded, got_meta, extra = load_batch(path)
    assert got_meta == {"format": 1, **meta}
    assert torch.equal(extra["learner_logprobs"], batch.old_logprobs - 0.01)
    for name, value in vars(batch).items():
        got = getattr(loaded, name)
        if isinstance(value, torch.Tensor):
            assert got.dtype == value.dtype and torch.equal(got, value), name
        else:
            assert got == value, name  # None fields stay None; the anchor texts come back from the header
    assert loaded.anchor_text and loaded.anchor_text == batch.anchor_text


def test_an_extra_tensor_may_not_shadow_a_batch_field(batch, tmp_path):
    with pytest.raises(ValueError, match="would shadow the batch field"):
        save_batch(tmp_path / "x.safetensors", batch, {}, {"advantages": torch.zeros(1)})


def test_a_file_that_is_not_a_recording_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match="not a calmrl rollout recording"):
        load_batch(tmp_path / "weights.safetensors")


def test_the_recorder_writes_every_nth_iteration_until_its_budget(batch, tmp_path, caplog):
    rec = RolloutRecorder(tmp_path, every=2, budget_mb=1024)
    assert [it for it in range(1, 7) if rec.due(it)] == [2, 4, 6]
    size = rec.record(2, batch, {"iteration": 2})
    assert size > 0 and list(recorded_iterations(tmp_path)) == [2]
    assert not RolloutRecorder(tmp_path, every=0, budget_mb=1024).due(2)  # 0: off

    small = RolloutRecorder(tmp_path / "small", every=1, budget_mb=1.5 * size / 2**20)  # room for one file
    with caplog.at_level(logging.WARNING, logger="calmrl.recording"):
        assert small.record(1, batch, {"iteration": 1}) == size
        assert small.record(2, batch, {"iteration": 2}) == 0  # would pass the budget: not kept, and recording ends
    assert list(recorded_iterations(tmp_path / "small")) == [1] and not small.due(3)
    assert "trainer.record_budget_mb" in caplog.text


def test_resuming_drops_the_killed_runs_recordings_after_the_checkpoint(batch, tmp_path):
    rec = RolloutRecorder(tmp_path, every=1, budget_mb=1024)
    sizes = {it: rec.record(it, batch, {"iteration": it}) for it in (1, 2, 3)}
    (tmp_path / "rollouts" / ".iter_00000004.safetensors.tmp-99").write_bytes(b"half")  # killed mid-write
    resumed = RolloutRecorder(tmp_path, every=1, budget_mb=1024, start_iter=2)  # the checkpoint is iteration 2's
    assert list(recorded_iterations(tmp_path)) == [1, 2]  # 3 is sampled again by the resumed run
    assert resumed.used == sizes[1] + sizes[2]
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == [
        "iter_00000001.safetensors",
        "iter_00000002.safetensors",
    ]
