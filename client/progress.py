"""The progress bar of per-image work at a site (image caching, feature extraction)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class ImagesPerSecond(ProgressColumn):
    """Recent throughput of a task in images/s."""

    def render(self, task: Task) -> Text:
        """Text such as ``12.3 img/s``."""
        return Text(f"{task.speed or 0.0:.2f} img/s", style="progress.data.speed")


def progress_bar(enabled: bool) -> Progress:
    """A rich progress bar (images done / total, images/s, time left); silent when disabled."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    ImagesPerSecond(), TimeRemainingColumn(), disable=not enabled)
