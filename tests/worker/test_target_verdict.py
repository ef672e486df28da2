"""The verdict of a task over its hosts: max_fail_percentage, a deadline that struck, a cancel."""

from __future__ import annotations

import pytest

from worker.on_targets import HostResult, TargetsOutcome, verdict

WEB1 = HostResult("web-01", "success", 0)
WEB2 = HostResult("web-02", "failed", 1)
WEB3 = HostResult("web-03", "unreachable", error="connection refused")
SLOW = HostResult("web-04", "timeout", error="the task's timeout struck")


@pytest.mark.parametrize(
    ("results", "max_fail_percentage", "expected"),
    [
        ([WEB1], 0, TargetsOutcome("success", None)),
        (
            [WEB1, WEB2, WEB3],
            0,
            TargetsOutcome(
                "failed",
                "2 of 3 hosts did not succeed (web-02: exit 1, web-03: unreachable); over max_fail_percentage 0",
            ),
        ),
        (
            [WEB1, WEB2, WEB1],
            50,
            TargetsOutcome("success", "1 of 3 hosts did not succeed (web-02: exit 1); within max_fail_percentage 50"),
        ),
        (
            [WEB1, WEB2],
            50,
            TargetsOutcome("success", "1 of 2 hosts did not succeed (web-02: exit 1); within max_fail_percentage 50"),
        ),
        (
            [WEB1, WEB2, SLOW],
            50,
            TargetsOutcome(
                "timeout",
                "2 of 3 hosts did not succeed (web-02: exit 1, web-04: timeout); over max_fail_percentage 50",
            ),
        ),
        (
            [WEB2, WEB3],
            100,
            TargetsOutcome(
                "success",
                "2 of 2 hosts did not succeed (web-02: exit 1, web-03: unreachable); within max_fail_percentage 100",
            ),
        ),
    ],
)
def test_the_share_of_hosts_that_did_not_succeed_decides(
    results: list[HostResult], max_fail_percentage: int, expected: TargetsOutcome
) -> None:
    assert verdict(results, max_fail_percentage, cancel_requested=False) == expected


def test_a_cancel_requested_makes_the_task_cancelled_whatever_the_hosts_did() -> None:
    assert verdict([WEB1, WEB1], 0, cancel_requested=True) == TargetsOutcome("cancelled", "the task was cancelled")
    cancelled = verdict([WEB1, HostResult("web-02", "cancelled")], 100, cancel_requested=True)
    assert cancelled == TargetsOutcome(
        "cancelled", "the task was cancelled; 1 of 2 hosts did not succeed (web-02: cancelled)"
    )
