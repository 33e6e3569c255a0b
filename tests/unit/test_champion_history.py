"""The champion history: records, who held @champion when, where a rollback goes, moves made elsewhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlstack.training.champion_history import (
    MOVED_ELSEWHERE,
    ChampionMove,
    moves_from_tags,
    rollback_stack,
    tenures,
    unrecorded_move,
)
from mlstack.training.promotion import plan_rollback

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def move(version: str, previous: str | None, minutes: int, kind: str = "promotion", by: str = "gate") -> ChampionMove:
    return ChampionMove(version, previous, T0 + timedelta(minutes=minutes), kind, by, f"why {version}", by)  # type: ignore[arg-type]


def as_tags(*moves: ChampionMove) -> dict[str, str]:
    return dict(m.tag() for m in moves) | {"champion_history": "[]", "unrelated": "x"}


def test_move_round_trips_through_its_tag():
    original = move("3", "2", 5, "rollback", "mlstack model rollback")
    key, value = original.tag()
    assert key.startswith("champion_move.") and key.endswith(".3")
    assert ChampionMove.from_json(value) == original


def test_moves_from_tags_orders_by_time_not_by_insertion_and_drops_repeats():
    first, second, third = move("1", None, 0), move("2", "1", 10), move("10", "2", 20)
    repeat = ChampionMove("10", "2", T0 + timedelta(minutes=21), "external", MOVED_ELSEWHERE, "seen", "poll")
    assert moves_from_tags(as_tags(third, repeat, first, second)) == [first, second, third]


def test_moves_from_tags_names_an_unreadable_record():
    with pytest.raises(ValueError, match="not a champion move record"):
        moves_from_tags({"champion_move.0000000000001.1": "{not json"})


def test_tenures_say_who_held_the_alias_when():
    moves = [move("1", None, 0), move("2", "1", 10), move("1", "2", 30, "rollback")]
    held = tenures(moves)
    assert [(t.version, t.start, t.end) for t in held] == [
        ("1", T0, T0 + timedelta(minutes=10)),
        ("2", T0 + timedelta(minutes=10), T0 + timedelta(minutes=30)),
        ("1", T0 + timedelta(minutes=30), None),
    ]
    assert held[-1].move.kind == "rollback"
    assert tenures([]) == []


def test_rollback_stack_replays_promotions_rollbacks_and_moves_made_elsewhere():
    promotions = [move("1", None, 0), move("2", "1", 1), move("3", "2", 2)]
    assert rollback_stack(promotions) == ["1", "2"]
    after_rollback = [*promotions, move("2", "3", 3, "rollback")]
    assert rollback_stack(after_rollback) == ["1"]
    assert plan_rollback(rollback_stack(after_rollback), "2") == "1"
    by_hand = [*after_rollback, ChampionMove("4", "2", T0 + timedelta(minutes=4), "external", "x", "y", "poll")]
    assert rollback_stack(by_hand) == ["1", "2"]  # a rollback from a hand-set v4 returns to v2


def test_rollback_stack_continues_a_list_kept_before_moves_were_recorded():
    assert rollback_stack([move("5", "4", 0)], legacy=["1", "3"]) == ["1", "3", "4"]


def test_rollback_recorded_but_alias_not_moved_is_undone_by_the_watcher_record():
    """A crash between the rollback's record and the alias move: the watcher's record restores the stack."""
    before = [move("1", None, 0), move("2", "1", 1)]
    recorded = [*before, move("1", "2", 2, "rollback")]
    seen = unrecorded_move("2", recorded, T0 + timedelta(minutes=3), "poll")
    assert seen is not None and (seen.version, seen.previous, seen.kind) == ("2", "1", "external")
    assert rollback_stack([*recorded, seen]) == rollback_stack(before) == ["1"]


def test_unrecorded_move_only_when_the_alias_left_the_last_record():
    moves = [move("1", None, 0), move("2", "1", 1)]
    assert unrecorded_move("2", moves, T0, "poll") is None
    assert unrecorded_move(None, moves, T0, "poll") is None  # alias deleted: not a new champion
    seen = unrecorded_move("1", moves, T0, "webhook")
    assert seen == ChampionMove("1", "2", T0, "external", MOVED_ELSEWHERE, "moved without the stack", "webhook")
    first = unrecorded_move("7", [], T0, "poll")
    assert first is not None and (first.previous, first.by) == (None, "unknown")
