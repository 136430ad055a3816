"""Stacked digits: the 1,000-mode counter on real stacked digits, on collapsed ones, and on half of them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distgan.data.builtin import stacked_digits_array
from distgan.metrics import digits_net
from distgan.metrics.stacked import N_TRIPLES, stacked_modes, triples


@pytest.fixture(scope="module")
def classifier():
    return digits_net.load()


@pytest.fixture(scope="module")
def real():
    return stacked_digits_array(25_600, seed=0)  # 25.6 per triple: every one of them is drawn


def test_real_stacked_digits_cover_all_modes_about_uniformly(real, classifier):
    q = stacked_modes(real[0], classifier)
    assert q["modes"] >= 990
    # sampling noise alone: E[KL] ~ (K - 1) / 2N = 0.02 for 25,600 samples over 1,000 bins
    assert q["reverse_kl"] < 0.05


def test_each_channel_is_classified_as_the_digit_drawn_for_it(real, classifier):
    images, labels = real[0][:2000], real[1][:2000]
    assert labels.shape == (2000, 3) and images.shape == (2000, 3, 8, 8)
    assert (triples(images, classifier) == labels @ np.array([100, 10, 1])).mean() > 0.95


def test_a_generator_stuck_on_one_triple_has_one_mode_and_kl_ln_1000(real, classifier):
    q = stacked_modes(np.repeat(real[0][:1], 5000, axis=0), classifier)
    assert q["modes"] == 1 and q["reverse_kl"] == pytest.approx(math.log(N_TRIPLES))


def test_half_the_triples_is_half_the_modes_and_kl_ln_2(real, classifier):
    images, labels = real
    half = images[labels[:, 0] < 5]  # red digit 0-4 only: 500 triples
    q = stacked_modes(half, classifier)
    assert 450 <= q["modes"] <= 520  # a few misread red digits land outside
    assert q["reverse_kl"] == pytest.approx(math.log(2), abs=0.1)


def test_the_default_classifier_is_the_shipped_one(real):
    assert stacked_modes(real[0][:1000]) == stacked_modes(real[0][:1000], digits_net.load())
    with pytest.raises(ValueError):
        stacked_modes(real[0][:0])
