"""The demo's step clock: wall, CPU and waited seconds per step from injected clocks; the run timeline's arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mlstack.simulation.timing import LoadAverage, StepClock, StepTime


class Ticks:
    """A settable reading (wall clock, CPU seconds or load average)."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def test_step_clock_books_wall_cpu_and_waits_per_step_and_the_load_at_both_ends() -> None:
    wall, cpu, load = Ticks(100.0), Ticks(5.0), Ticks(3.0)
    clock = StepClock(cpu=cpu, clock=wall, load=load)
    clock.begin("1. first")
    wall.value, cpu.value = 110.0, 9.0
    clock.waited(4.0, "paced traffic")
    clock.note("a remark")
    clock.begin("2. second")
    wall.value, cpu.value, load.value = 112.5, 9.5, 1.5
    steps, loads = clock.finish()

    assert steps == [
        StepTime("1. first", 10.0, 4.0, 4.0, ("paced traffic", "a remark")),
        StepTime("2. second", 2.5, 0.5, 0.0, ()),
    ]
    assert loads == LoadAverage(start=3.0, end=1.5)


def test_step_clock_never_books_more_waiting_than_the_step_lasted_nor_a_negative_wait() -> None:
    wall = Ticks()
    clock = StepClock(cpu=Ticks(), clock=wall, load=Ticks())
    clock.begin("1. short")
    clock.waited(-2.0)
    wall.value = 1.0
    clock.waited(5.0)
    steps, _ = clock.finish()
    assert steps[0].waited_seconds == 1.0


def test_finishing_a_clock_that_never_began_gives_no_steps() -> None:
    steps, loads = StepClock(cpu=Ticks(), clock=Ticks(), load=Ticks(2.0)).finish()
    assert steps == [] and loads == LoadAverage(2.0, 2.0)


def test_run_timeline_splits_the_retraining_wait_into_idle_and_working_seconds() -> None:
    from mlstack.simulation.demo import RunTimeline

    emitted = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    timeline = RunTimeline(
        created=emitted + timedelta(seconds=0.5),
        pending=emitted + timedelta(seconds=3.0),
        running=emitted + timedelta(seconds=13.0),
        ended=emitted + timedelta(seconds=73.0),
    )
    assert timeline.idle_seconds(emitted) == 3.0  # trigger and worker polling only
    assert timeline.describe(emitted) == (
        "drift event -> run created +0.5s, picked up by the worker +2.5s, "
        "running (process start, flow imports) +10.0s, finished (train, gate, rollout) +60.0s"
    )


def test_run_timeline_without_a_pickup_counts_the_idle_time_to_its_creation() -> None:
    from mlstack.simulation.demo import RunTimeline

    emitted = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    timeline = RunTimeline(created=emitted + timedelta(seconds=2), pending=None, running=None, ended=None)
    assert timeline.idle_seconds(emitted) == 2.0
    assert timeline.describe(emitted) == "drift event -> run created +2.0s"


def test_a_prior_step_comes_first_with_its_own_seconds() -> None:
    wall = Ticks(10.0)
    clock = StepClock(cpu=Ticks(1.0), clock=wall, load=Ticks())
    clock.prior("0. start-up", 4.0, 2.0)
    clock.begin("1. first")
    wall.value = 11.0
    steps, _ = clock.finish()
    assert [(s.title, s.wall_seconds, s.cpu_seconds) for s in steps] == [
        ("0. start-up", 4.0, 2.0),
        ("1. first", 1.0, 0.0),
    ]


def _run_between(started: datetime, finished: datetime, answered: int):
    from collections import Counter

    from mlstack.simulation.scenarios import SCENARIOS
    from mlstack.simulation.traffic import TrafficResult, TrafficRun

    result = TrafficResult(sent=answered, statuses=Counter({200: answered}))
    return TrafficRun(SCENARIOS["normal"], started, finished, result, {}, answered, 0.1)


def test_profiled_rows_counts_only_the_windows_that_overlap_the_run(tmp_path) -> None:
    import pandas as pd

    from mlstack.simulation.demo import profiled_rows
    from tests.support.factories import make_settings
    from tests.support.profile_windows import write_windows

    settings = make_settings(tmp_path / "state")
    start = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    samples = [pd.DataFrame({"loan_amount": [1000.0 * (i + 1)] * rows}) for i, rows in enumerate((3, 4, 5))]
    write_windows(settings, "1", samples, start, timedelta(seconds=5))  # [0, 5), [5, 10), [10, 15) s

    assert profiled_rows(settings, _run_between(start + timedelta(seconds=6), start + timedelta(seconds=8), 4)) == 4
    assert profiled_rows(settings, _run_between(start + timedelta(seconds=2), start + timedelta(seconds=12), 12)) == 12
    assert profiled_rows(settings, _run_between(start + timedelta(minutes=5), start + timedelta(minutes=6), 1)) == 0


def test_await_profiles_books_its_wait_and_gives_up_after_the_slack_when_rows_never_arrive(
    tmp_path, monkeypatch
) -> None:
    from mlstack.simulation import demo
    from tests.support.factories import make_settings

    monkeypatch.setattr(demo, "PROFILE_SLACK_SECONDS", 0.3)
    settings = make_settings(tmp_path / "state", profile_window_seconds=5.0)
    long_ago = datetime.now(UTC) - timedelta(minutes=10)  # its window closed long ago: no sleep to its end
    clock = StepClock(cpu=Ticks(), load=Ticks())
    clock.begin("6. traffic")
    demo.await_profiles(settings, clock, _run_between(long_ago, long_ago + timedelta(seconds=1), 10))
    steps, _ = clock.finish()
    assert steps[0].waited_seconds >= 0.3  # it waited out the slack, then went on (no error)
    assert "for the profile windows to close and be written (5s windows)" in steps[0].notes[0]


def test_step_titles_in_the_table_drop_their_detail_and_cut_at_a_word() -> None:
    from mlstack.cli.render import short_step_title

    assert short_step_title("3. online store, feast apply + materialise (flow materialize-features)") == (
        "3. online store, feast apply + materialise"
    )
    assert short_step_title("2. synthetic data") == "2. synthetic data"
    long = "10. the event triggers deployment train-model/weekly-and-on-drift on the worker"
    assert short_step_title(long, width=40) == "10. the event triggers deployment…"
    assert len(short_step_title(long, width=40)) <= 40
