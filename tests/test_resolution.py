"""What asv files: figures rounded to the digits that were resolved."""

from __future__ import annotations

import math

import pytest

from schedbench.resolution import significant


@pytest.mark.parametrize(("value", "kept"), [
    (5.612345678901234, 5.612), (0.0012345678, 0.001235), (43.4166666, 43.42),
    (123456.7, 123500.0), (-2.71828, -2.718), (0.0, 0.0),
])
def test_four_significant_digits(value, kept):
    assert significant(value) == kept


def test_what_was_not_measured_stays_so():
    assert math.isnan(significant(float("nan")))
    assert significant(float("inf")) == float("inf")
