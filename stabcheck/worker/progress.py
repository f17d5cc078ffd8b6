"""A rich progress bar for long traced/confirm runs, on stderr; only used on a terminal."""

from __future__ import annotations

from typing import Any


class Progress:
    def __init__(self, targets: int) -> None:
        # rich: imported only when rendering
        from rich.console import Console
        from rich.progress import (  # rich: only when a table or a bar is drawn
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress  # rich: only when a table or a bar is drawn

        self.bar = RichProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("starting the worker (importing JAX and the entries' modules)", total=None)
        self.entries = 0
        self.done = 0
        self.bar.start()

    def event(self, e: dict[str, Any]) -> None:
        kind = e.get("event")
        if kind == "loaded":
            self.entries += len(e.get("entries", ()))
            self.bar.update(self.task, total=self.entries, description="tracing")
        elif kind == "start":
            self.bar.update(self.task, description=f"tracing {e.get('entry', '')}")
        elif kind == "entry":
            self.done += 1
            self.bar.update(self.task, completed=self.done)

    def close(self) -> None:
        self.bar.stop()
