from calmrl.runs import train_seeds


def test_train_seeds_are_reproducible_and_below_eval_range():
    a = train_seeds(seed=0, it=5, num_groups=16, eval_offset=1000)
    assert a == train_seeds(seed=0, it=5, num_groups=16, eval_offset=1000)
    assert a != train_seeds(seed=0, it=6, num_groups=16, eval_offset=1000)
    assert a != train_seeds(seed=1, it=5, num_groups=16, eval_offset=1000)
    assert all(0 <= s < 1000 for s in a) and len(a) == 16
