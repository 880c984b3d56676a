"""A rich progress bar per view for `featuremart sync` on a terminal; silent in CI logs."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class SyncProgress:
    def __init__(self, console: Console, enabled: bool):
        self.enabled = enabled
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=True, disable=not enabled)
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> SyncProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def update(self, view: str, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if view not in self._tasks:
            self._tasks[view] = self._progress.add_task(view, total=None)
        self._progress.update(self._tasks[view], description=f"{view} ({phase})", completed=done,
                              total=total or None)
