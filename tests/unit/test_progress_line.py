"""ProgressLine: the latest status, printed at most once per interval."""

from __future__ import annotations

import pytest

from attrbench.errors import UsageError
from attrbench.progress import ProgressLine, progress_interval
from attrbench.workload.build import build_workload
from attrbench.workload.spec import preset


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def tiny():
    return build_workload(preset("tiny"))


def test_progress_line_prints_the_latest_status_at_most_once_per_interval():
    printed, clock = [], FakeClock()
    line = ProgressLine(printed.append, interval_s=10, clock=clock)
    line.update("feature rows 512/4,000")
    clock.now += 4
    line.update("feature rows 1,024/4,000")
    assert printed == []
    assert line.seconds_to_next() == pytest.approx(6)
    clock.now += 7
    line.update("feature rows 1,536/4,000")
    assert printed == ["11.00 s: feature rows 1,536/4,000"]
    clock.now += 130
    line.tick()  # nothing new reported: the last status again, with the time
    assert printed[-1] == "2m21.0s: feature rows 1,536/4,000"


def test_progress_line_interval_zero_prints_nothing(monkeypatch):
    printed, clock = [], FakeClock()
    line = ProgressLine(printed.append, interval_s=0, clock=clock)
    clock.now += 1000
    line.update("anything")
    line.tick()
    assert printed == [] and line.seconds_to_next() is None
    monkeypatch.setenv("ATTRBENCH_PROGRESS_INTERVAL", "2.5")
    assert progress_interval() == 2.5
    monkeypatch.delenv("ATTRBENCH_PROGRESS_INTERVAL")
    assert progress_interval() == 30.0
    for bad in ("not a number", "nan", "inf", "-1", "1e400"):
        monkeypatch.setenv("ATTRBENCH_PROGRESS_INTERVAL", bad)
        with pytest.raises(UsageError, match="ATTRBENCH_PROGRESS_INTERVAL"):
            progress_interval()
