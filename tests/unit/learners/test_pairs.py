"""The preference algos' pair role (calmrl.learners.pairs): how a step's pairs are shared over learner ranks."""

from types import SimpleNamespace

import pytest
import torch

from calmrl.learners.pairs import PairRole, ReferenceCache, share


def chunks(n_pairs: int, world: int, micro_batch_size: int) -> list[list[tuple[list[int], float]]]:
    idx = list(range(100, 100 + n_pairs))
    out = []
    for rank in range(world):
        role = PairRole(SimpleNamespace(rank=rank, world=world), None, False, None, 0, micro_batch_size)
        out.append(role._my_chunks(idx))
    return out


@pytest.mark.parametrize(("n", "world", "micro"), [(5, 2, 4), (7, 3, 2), (1, 2, 8), (8, 1, 4), (3, 4, 4)])
def test_ranks_train_every_pair_once_in_the_same_number_of_micro_batches(n, world, micro):
    per_rank = chunks(n, world, micro)
    assert len({len(c) for c in per_rank}) == 1  # ZeRO-3: every rank runs as many forwards
    trained = [i for c in per_rank for pairs, weight in c if weight for i in pairs]
    assert sorted(trained) == list(range(100, 100 + n))  # each pair once, with weight 1
    assert all(len(pairs) <= max(1, micro // 2) for c in per_rank for pairs, _ in c)
    for c in per_rank:
        assert all(weight in (0.0, 1.0) and pairs for pairs, weight in c)


def test_five_pairs_over_two_ranks_of_two_pair_micro_batches():
    rank0, rank1 = chunks(5, 2, 4)
    assert rank0 == [([100, 101], 1.0), ([102], 1.0)]
    assert rank1 == [([103, 104], 1.0), ([100], 0.0)]  # its share ran out: a zero-weight pass on a real pair


def test_share_and_cache_rows_round_trip():
    assert [share(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert [share(2, r, 4) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]
    cache = ReferenceCache(torch.arange(5.0), -torch.arange(5.0), [torch.ones(i + 1) for i in range(5)],
                           [torch.zeros(i + 2) for i in range(5)])  # fmt: skip
    parts = [cache.rows(*share(5, r, 3)) for r in range(3)]
    whole = ReferenceCache.concat(parts)
    assert torch.equal(whole.chosen, cache.chosen) and torch.equal(whole.rejected, cache.rejected)
    assert [len(r) for r in whole.chosen_rewards] == [1, 2, 3, 4, 5]
    assert [len(r) for r in whole.rejected_rewards] == [2, 3, 4, 5, 6]
