"""Pacing of the daemon's Postgres digests, as a pure function of the work done."""

from __future__ import annotations

import pytest

from reconciler.pacing import Pacer


def test_no_budget_never_pauses() -> None:
    assert Pacer().pause_after(10_000_000, 20.0) == 0.0


@pytest.mark.parametrize(("share", "pause"), [(0.5, 4.0), (0.25, 12.0), (1.0, 0.0)])
def test_a_share_of_time_keeps_digesting_to_that_share(share: float, pause: float) -> None:
    waited = Pacer(max_share=share).pause_after(1_000_000, 4.0)
    assert waited == pytest.approx(pause)
    assert 4.0 / (4.0 + waited) == pytest.approx(share)


def test_a_row_budget_slows_fast_digests_only() -> None:
    pacer = Pacer(rows_per_second=1_000_000)
    assert pacer.pause_after(5_000_000, 2.0) == pytest.approx(3.0)
    assert pacer.pause_after(5_000_000, 6.0) == 0.0  # already slower than the budget


def test_the_stricter_budget_wins() -> None:
    pacer = Pacer(max_share=0.5, rows_per_second=1_000_000)
    assert pacer.pause_after(5_000_000, 2.0) == pytest.approx(3.0)
    assert pacer.pause_after(1_000_000, 2.0) == pytest.approx(2.0)
