import numpy as np
import pytest

from cocoseg.sampling import RepeatFactorSampler, repeat_factors


def test_repeat_factors_by_hand():
    # class 0 in 3 of 4 images (f = 0.75), class 1 in 1 of 4 (f = 0.25); t = 0.5
    presence = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=bool)
    factors = repeat_factors(presence, 0.5)
    rare = np.sqrt(0.5 / 0.25)
    np.testing.assert_allclose(factors, [1, 1, rare, 1])


def test_empirical_frequencies_match_the_factors():
    factors = np.array([1.0, 1.0, 2.5, 1.4, 3.0])
    sampler = RepeatFactorSampler(factors, seed=3)
    counts = np.zeros(len(factors))
    epochs = 4000
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        counts += np.bincount(list(sampler), minlength=len(factors))
    np.testing.assert_allclose(counts / epochs, factors, atol=0.03)


def test_sampler_is_seeded_and_changes_per_epoch():
    factors = np.full(50, 1.5)
    a, b = RepeatFactorSampler(factors, seed=1), RepeatFactorSampler(factors, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    assert list(RepeatFactorSampler(factors, seed=2)) != list(b)


@pytest.mark.parametrize("replicas", [2, 3])
def test_replicas_split_one_epoch_list(replicas):
    factors = np.array([1.0, 2.0, 1.5, 1.0, 3.0, 1.2, 1.0])
    whole = RepeatFactorSampler(factors, seed=5)
    parts = [RepeatFactorSampler(factors, seed=5, num_replicas=replicas, rank=r) for r in range(replicas)]
    full = whole.epoch_indices()
    assert len({len(p) for p in parts}) == 1
    kept = len(full) // replicas * replicas  # the tail that does not fill every rank is dropped
    interleaved = [parts[k % replicas].epoch_indices()[k // replicas] for k in range(kept)]
    assert interleaved == full[:kept] and len(parts[0]) == kept // replicas
