"""The per-epoch progress bar: loss, lr, images/s, data-wait %, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def epoch_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[ips]} img/s  "
                   "data-wait {task.fields[wait]}%"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
