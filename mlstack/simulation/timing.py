"""Where the demo's time goes: wall-clock and CPU seconds per step, and how much of the wall time was waiting by design.

CPU is that of the demo's process tree (the demo, its servers, the worker's flow runs): on a shared
machine the wall time grows with the neighbours' load, the CPU seconds much less, so the two side by
side tell working from waiting. "Waited" is the time the story spends waiting on purpose: paced
traffic, a profile window closing, the worker picking a run up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mlstack.processes import tree_cpu_seconds


@dataclass(frozen=True)
class StepTime:
    """One step of the story: wall-clock seconds, CPU seconds of the process tree, and seconds waited by design."""

    title: str
    wall_seconds: float
    cpu_seconds: float
    waited_seconds: float
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadAverage:
    """The machine's 1-minute load average at the start and at the end of the story (neighbours count too)."""

    start: float
    end: float


@dataclass
class StepClock:
    """Times the story step by step: `begin` closes the step before; `finish` returns them all."""

    cpu: Callable[[], float] = tree_cpu_seconds
    clock: Callable[[], float] = time.monotonic
    load: Callable[[], float] = field(default=lambda: os.getloadavg()[0])
    steps: list[StepTime] = field(default_factory=list)
    _title: str | None = None
    _began: float = 0.0
    _cpu_began: float = 0.0
    _waited: float = 0.0
    _notes: list[str] = field(default_factory=list)
    _load_start: float | None = None

    def begin(self, title: str) -> None:
        """End the current step (if any) and start timing `title`."""
        self._close()
        if self._load_start is None:
            self._load_start = self.load()
        self._title, self._began, self._cpu_began = title, self.clock(), self.cpu()
        self._waited, self._notes = 0.0, []

    def prior(self, title: str, wall_seconds: float, cpu_seconds: float) -> None:
        """Book a step that ran before the clock was made (the process' start-up)."""
        self.steps.append(StepTime(title, wall_seconds, cpu_seconds, 0.0))

    def waited(self, seconds: float, note: str = "") -> None:
        """Book `seconds` of the current step as waiting by design; `note` says on what."""
        self._waited += max(0.0, seconds)
        if note:
            self._notes.append(note)

    def note(self, text: str) -> None:
        """A remark on the current step (e.g. a breakdown of its wait)."""
        self._notes.append(text)

    def finish(self) -> tuple[list[StepTime], LoadAverage]:
        """End the current step; every step's time, and the load average at the start and now."""
        self._close()
        end = self.load()
        return list(self.steps), LoadAverage(self._load_start if self._load_start is not None else end, end)

    def _close(self) -> None:
        if self._title is None:
            return
        wall = self.clock() - self._began
        self.steps.append(
            StepTime(self._title, wall, self.cpu() - self._cpu_began, min(self._waited, wall), tuple(self._notes))
        )
        self._title = None
