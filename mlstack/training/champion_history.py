"""The history of `@champion`: every move of the alias, who or what made it and why (MLflow keeps none).

One record store: each move is one tag on the registered model, ``champion_move.<epoch ms>.<version>``,
holding a JSON `ChampionMove`. One tag per move, not one growing list, so a record is never rewritten,
two writers cannot lose each other's records and no tag-length limit is reached. Everything else is
derived from the moves: who held the alias when (`tenures`) and where a rollback goes (`rollback_stack`).

Moves are written by whoever makes them (the gate's promotion, `mlstack model rollback`) and, for moves
made elsewhere (the MLflow UI, another client), by whoever notices first: the webhook receiver or the poll.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Literal

from mlstack.training.promotion import history_after_promotion, history_after_rollback

MOVE_TAG_PREFIX = "champion_move."
MoveKind = Literal["promotion", "rollback", "external"]
MOVED_ELSEWHERE = "outside the stack (MLflow UI or another MLflow client)"


@dataclass(frozen=True)
class ChampionMove:
    """`@champion` moved to `version` from `previous` (None: there was none) at `at`."""

    version: str
    previous: str | None
    at: datetime
    kind: MoveKind  # promotion by the gate, rollback, or a move the stack did not make
    by: str  # who or what moved it
    reason: str
    seen_by: str  # who recorded it: the mover itself, `webhook` or `poll`

    def tag(self) -> tuple[str, str]:
        """The registered-model tag (key, JSON value) that records this move; keys sort in time order."""
        key = f"{MOVE_TAG_PREFIX}{int(self.at.timestamp() * 1000):013d}.{self.version}"
        return key, json.dumps(self.payload(), sort_keys=True)

    def payload(self) -> dict[str, str | None]:
        """The move as the `mlstack.model.promoted` event's payload (times as ISO text)."""
        return {key: value for key, value in asdict(self).items() if key != "at"} | {"at": self.at.isoformat()}

    @classmethod
    def from_json(cls, text: str) -> ChampionMove:
        """A move from its tag value; ValueError when it is not one."""
        try:
            record = json.loads(text)
            return cls(
                version=str(record["version"]),
                previous=None if record["previous"] is None else str(record["previous"]),
                at=datetime.fromisoformat(record["at"]),
                kind=record["kind"],
                by=str(record["by"]),
                reason=str(record["reason"]),
                seen_by=str(record["seen_by"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a champion move record: {text[:200]!r}") from exc


def moves_from_tags(tags: Mapping[str, str]) -> list[ChampionMove]:
    """The recorded moves, oldest first; a repeat of the same version (two recorders of one move) is dropped."""
    moves: list[ChampionMove] = []
    for key in sorted(key for key in tags if key.startswith(MOVE_TAG_PREFIX)):
        move = ChampionMove.from_json(tags[key])
        if moves and moves[-1].version == move.version:
            continue
        moves.append(move)
    return moves


def rollback_stack(moves: Sequence[ChampionMove], legacy: Sequence[str] = ()) -> list[str]:
    """Earlier champions a rollback walks back through, oldest first (`promotion.plan_rollback` reads it).

    A rollback returns to the version it restored's predecessor; any other move pushes the version it
    replaced. `legacy` is the list kept before moves were recorded (tag `champion_history`), the start.
    """
    history = list(legacy)
    for move in moves:
        if move.kind == "rollback":
            history = history_after_rollback(history, move.version)
        else:
            history = history_after_promotion(history, move.previous)
    return history


@dataclass(frozen=True)
class Tenure:
    """One version's time as `@champion`: from `start` until `end` (None: still champion), and the move starting it."""

    version: str
    start: datetime
    end: datetime | None
    move: ChampionMove


def tenures(moves: Sequence[ChampionMove]) -> list[Tenure]:
    """Who held `@champion` when, oldest first: each move starts a tenure that the next move ends."""
    ends: list[datetime | None] = [*(move.at for move in moves[1:]), None]
    return [Tenure(move.version, move.at, end, move) for move, end in zip(moves, ends, strict=False)]


def unrecorded_move(
    current: str | None, moves: Sequence[ChampionMove], at: datetime, seen_by: str
) -> ChampionMove | None:
    """The move to record when the alias (`current`) is not where the last record left it; None if it is.

    An alias removed by hand (None) is not a move to a new champion and is not recorded.
    """
    last = moves[-1].version if moves else None
    if current is None or current == last:
        return None
    if moves:
        return ChampionMove(current, last, at, "external", MOVED_ELSEWHERE, "moved without the stack", seen_by)
    return ChampionMove(current, None, at, "external", "unknown", "champion when the history began", seen_by)
