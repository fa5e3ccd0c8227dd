import torch

from calmrl.algos.segments import (
    first_row_of_each,
    group_index,
    normalize_in_groups,
    segment_mean_std,
    to_tokens,
)


def test_group_index_on_pairs():
    uid = torch.tensor([0, 0, 1, 1, 0])
    anchor = torch.tensor([5, 6, 5, 5, 5])
    ids, n = group_index(uid, anchor)
    assert n == 3
    assert ids[0] == ids[4] and ids[2] == ids[3]
    assert len({ids[0].item(), ids[1].item(), ids[2].item()}) == 3


def test_segment_mean_std_matches_torch():
    values = torch.tensor([1.0, 2.0, 4.0, 10.0, 7.0])
    ids = torch.tensor([0, 0, 0, 1, 2])
    mean, std, count = segment_mean_std(values, ids, 3)
    assert torch.allclose(mean, torch.tensor([7 / 3, 10.0, 7.0]))
    assert torch.allclose(std[0], torch.tensor([1.0, 2.0, 4.0]).std())  # unbiased
    assert std[1] == 0 and std[2] == 0
    assert count.tolist() == [3, 1, 1]


def test_normalize_in_groups_std_and_mean_and_singletons():
    values = torch.tensor([1.0, 3.0, 5.0, 9.0])
    ids = torch.tensor([7, 7, 2, 4])  # arbitrary (non-dense) ids; groups 2 and 4 have one member
    out = normalize_in_groups(values, ids, norm="std", eps=0.0)
    s = torch.tensor([1.0, 3.0]).std()
    assert torch.allclose(out, torch.tensor([-1 / s, 1 / s, 0.0, 0.0]))
    out_mean = normalize_in_groups(values, ids, norm="mean")
    assert torch.allclose(out_mean, torch.tensor([-1.0, 1.0, 0.0, 0.0]))


def test_first_row_of_each_and_to_tokens():
    traj = torch.tensor([3, 3, 1, 1, 1, 8])
    rep, inverse = first_row_of_each(traj)
    assert traj[rep].tolist() == [1, 3, 8]
    assert rep.tolist() == [2, 0, 5]
    assert torch.equal(traj[rep][inverse], traj)
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert torch.equal(to_tokens(torch.tensor([2.0, -1.0]), mask), torch.tensor([[0.0, 2.0, 2.0], [-1.0, 0.0, 0.0]]))


def test_discounted_reverse_cumsum_matches_loop_with_shuffled_rows():
    from calmrl.algos.segments import discounted_reverse_cumsum

    # trajectory 10 has 3 steps, trajectory 4 has 1, trajectory 7 has 2; rows shuffled
    seg = torch.tensor([7, 10, 4, 10, 7, 10])
    pos = torch.tensor([1, 2, 0, 0, 0, 1])
    val = torch.tensor([5.0, 1.0, 3.0, 0.0, 2.0, 0.0])
    out = discounted_reverse_cumsum(val, seg, pos, gamma=0.5)
    # traj 10: values by position [0, 0, 1] -> [0.25, 0.5, 1]; traj 7: [2, 5] -> [4.5, 5]; traj 4: [3]
    assert torch.allclose(out, torch.tensor([5.0, 1.0, 3.0, 0.25, 4.5, 0.5]))
    assert torch.allclose(discounted_reverse_cumsum(val, seg, pos, gamma=1.0)[3], torch.tensor(1.0))
    assert torch.allclose(discounted_reverse_cumsum(val, seg, pos, gamma=0.0), val)


def test_group_index_packs_large_and_negative_keys_like_unique_rows():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-(2**40), 2**40, (500,), generator=g)
    b = torch.randint(0, 3, (500,), generator=g)
    a[::7] = a[0]  # some repeats
    ids, n = group_index(a, b)
    _, expected = torch.unique(torch.stack([a, b], 1), dim=0, return_inverse=True)
    assert n == int(expected.max()) + 1
    assert torch.equal(ids, expected)


def test_equal_values_give_exact_zero_even_with_float_rounding():
    values = torch.full((7,), 0.857)  # the float32 mean of these is not exactly 0.857
    assert torch.equal(normalize_in_groups(values, torch.zeros(7, dtype=torch.long)), torch.zeros(7))
    assert torch.equal(normalize_in_groups(values, torch.zeros(7, dtype=torch.long), eps=0.0), torch.zeros(7))
