import pytest
import torch

from calmrl.data import Step, Trajectory, build_batch


def _step(prompt, response, logprobs, reward, anchor, invalid=False):
    return Step(
        prompt_ids=prompt,
        response_ids=response,
        logprobs=logprobs,
        response_text="r",
        action=None if invalid else "a",
        reward=reward,
        anchor=anchor,
        invalid=invalid,
    )


def test_build_batch_layout():
    t0 = Trajectory(
        uid=5,
        seed=1,
        task="t",
        steps=[_step([1, 2], [3], [-0.1], 0.0, "A"), _step([1, 2, 4], [5, 6], [-0.2, -0.3], 1.0, "B")],
    )
    t1 = Trajectory(uid=5, seed=1, task="t", steps=[_step([1], [7], [-0.4], -0.1, "A", invalid=True)])
    b = build_batch([t0, t1], pad_token_id=0)
    assert len(b) == 3
    assert b.input_ids.tolist() == [[1, 2, 3, 0, 0], [1, 2, 4, 5, 6], [1, 7, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b.response_mask.tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 1, 1], [0, 1, 0, 0, 0]]
    assert torch.allclose(b.old_logprobs[1], torch.tensor([0, 0, 0, -0.2, -0.3]))
    assert b.traj.tolist() == [0, 0, 1] and b.step.tolist() == [0, 1, 0] and b.uid.tolist() == [5, 5, 5]
    assert b.anchor[0] == b.anchor[2] != b.anchor[1]
    assert torch.allclose(b.episode_return, torch.tensor([1.0, 1.0, -0.1]))
    assert b.invalid.tolist() == [False, False, True]
    sub = b.select(torch.tensor([2, 0]))
    assert sub.traj.tolist() == [1, 0] and sub.anchor_text == ["A", "A"]


def test_empty_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="no steps"):
        build_batch([Trajectory(uid=0, seed=0, task="t")], pad_token_id=0)
