"""The in-process moving window: exact over any window-long span, with honest reset times."""

from __future__ import annotations

import time

from core.ratelimit import LocalMovingWindow


def test_allows_exactly_the_limit_within_a_window_then_refuses() -> None:
    window = LocalMovingWindow()
    results = [window.hit("p1", 3, 1.0) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0]
    assert results[-1].reset_seconds == 1  # the oldest hit leaves within the second


def test_keys_are_independent() -> None:
    window = LocalMovingWindow()
    assert window.hit("a", 1, 1.0).allowed
    assert not window.hit("a", 1, 1.0).allowed
    assert window.hit("b", 1, 1.0).allowed


def test_hits_leave_the_window_one_by_one() -> None:
    window = LocalMovingWindow()
    assert window.hit("k", 2, 0.3).allowed
    time.sleep(0.15)
    assert window.hit("k", 2, 0.3).allowed
    assert not window.hit("k", 2, 0.3).allowed
    time.sleep(0.2)  # the first hit (0.35 s old) has left; the second (0.2 s) has not
    assert window.hit("k", 2, 0.3).allowed
    assert not window.hit("k", 2, 0.3).allowed


def test_refused_hits_do_not_count() -> None:
    window = LocalMovingWindow()
    assert window.hit("k", 1, 0.2).allowed
    for _ in range(50):
        assert not window.hit("k", 1, 0.2).allowed
    time.sleep(0.25)
    assert window.hit("k", 1, 0.2).allowed


def test_idle_keys_are_swept_but_live_ones_kept() -> None:
    window = LocalMovingWindow()
    window.SWEEP_SECONDS = 0.0  # sweep on every hit
    window.hit("slow", 5, 2.0)
    window.hit("fast", 5, 0.05)
    time.sleep(0.1)
    window.hit("other", 5, 0.05)
    # "fast" is idle past its window and gone; "slow" is still inside its 2 s window.
    assert window.hit("slow", 5, 2.0).remaining == 3
    assert window.hit("fast", 5, 0.05).remaining == 4
