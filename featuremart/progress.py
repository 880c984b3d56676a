"""A rich progress bar per view for `featuremart sync` on a terminal; silent in CI logs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:  # pragma: no cover - imported only when a bar is drawn: not in CI logs or with --json
    from rich.progress import Progress, TaskID


class SyncProgress:
    def __init__(self, console: Console, enabled: bool):
        self.enabled = enabled
        self._progress: Progress | None = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=console, transient=True)
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> SyncProgress:
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, view: str, phase: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        if view not in self._tasks:
            self._tasks[view] = self._progress.add_task(view, total=None)
        self._progress.update(self._tasks[view], description=f"{view} ({phase})", completed=done,
                              total=total or None)
