"""Pictures of runs: ``curves.png``, each run's ``metrics.jsonl`` drawn against the optimiser step
(loss, lr, images/s, data-wait, rank fraction, kNN top-1), several runs overlaid. The trainer
redraws it in the run folder at each epoch's end; ``sslight plot RUN...`` draws any runs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sslight.config import ConfigError

METRICS_FILE = "metrics.jsonl"

# (record key, panel title, the record kinds that carry it); kNN also at initialisation (step 0)
PANELS = (
    ("loss", "loss", ("train",)),
    ("lr", "learning rate", ("train",)),
    ("images_per_s", "images/s", ("train",)),
    ("data_wait_pct", "data-wait (%)", ("train",)),
    ("rank_fraction", "rank fraction (effective rank / bound)", ("train",)),
    ("knn_top1", "kNN top-1 (%)", ("init", "epoch")),
)
MARKERS_BELOW = 30  # points: a series this short gets markers, so a single log window still shows


def records(run: Path) -> list[dict]:
    """The run's records; a last line still being written (``sslight plot`` on a live run) is left out."""
    text = (run / METRICS_FILE).read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def series(run: list[dict], key: str, kinds: tuple[str, ...]) -> tuple[list[int], list[float]]:
    """``key`` over the steps; a resumed run logs again the steps after its checkpoint: the later record wins."""
    at = {r["step"]: r[key] for r in run if r["kind"] in kinds and r.get(key) is not None}
    steps = sorted(at)
    return steps, [at[s] for s in steps]


def labels(runs: list[Path]) -> list[str]:
    """The run folder names, or the paths as given where two folders share a name."""
    names = [run.name for run in runs]
    return names if len(set(names)) == len(names) else [str(run) for run in runs]


def colours(n: int) -> list:
    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    return [matplotlib.colormaps["turbo"](i / (n - 1)) for i in range(n)]


def draw(runs: list[Path]) -> Figure | None:
    """One panel per metric, a line per run; None when no run has a train record yet."""
    logged = [records(run) for run in runs]
    if not any(r["kind"] == "train" for run in logged for r in run):
        return None
    # a Figure without pyplot draws with Agg and keeps no global state: the trainer calls this every
    # epoch; fixed margins, as the layout engines double the cost of a draw
    fig = Figure(figsize=(12, 6.5))
    one = len(runs) == 1  # a title above, or a legend below
    fig.subplots_adjust(left=0.06, right=0.985, top=0.91 if one else 0.95, bottom=0.09 if one else 0.15,
                        wspace=0.22, hspace=0.28)
    axes = fig.subplots(2, 3, sharex=True).flat
    names, palette = labels(runs), colours(len(runs))
    for ax, (key, title, kinds) in zip(axes, PANELS):
        drawn = False
        for run, name, colour in zip(logged, names, palette):
            steps, values = series(run, key, kinds)
            if steps:
                marker = "o" if key == "knn_top1" or len(steps) < MARKERS_BELOW else None
                ax.plot(steps, values, color=colour, marker=marker, markersize=3, linewidth=1.2, label=name)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="grey")
            ax.set_yticks([])
        ax.set_title(title, fontsize=10)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))  # short labels: fixed margins hold them
        ax.grid(alpha=0.3)
    for ax in fig.axes[3:]:
        ax.set_xlabel("optimiser step")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # no step 0.5 on a run of a few steps
    if len(runs) == 1:
        fig.suptitle(names[0])
    else:
        handles = {}  # the first panel's lines: plain lines, without the kNN panel's markers
        for h in (h for ax in fig.axes for h in ax.get_lines()):
            handles.setdefault(h.get_label(), h)
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 3), frameon=False)
    return fig


def save_curves(runs: list[Path], png: Path) -> Path | None:
    """Draws ``runs`` into ``png`` (replaced atomically: a viewer never reads half a file) and
    returns it; None, writing nothing, when no run has a train record yet."""
    fig = draw(runs)
    if fig is None:
        return None
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, png)
    finally:
        tmp.unlink(missing_ok=True)
    return png


def main(runs: list[str], out: str | None) -> int:
    """``sslight plot RUN... [--out F]``: by default RUN/curves.png for one run, else ./curves.png."""
    folders = [Path(run) for run in runs]
    for folder in folders:
        if not (folder / METRICS_FILE).is_file():
            raise ConfigError(f"{folder} is not a run folder (no {METRICS_FILE} in it); give a training run's folder")
    png = Path(out) if out else folders[0] / "curves.png" if len(folders) == 1 else Path("curves.png")
    written = save_curves(folders, png)
    if written is None:
        print(f"nothing to plot yet: no log window written in {', '.join(runs)}", file=sys.stderr)
        return 1
    print(f"curves: {written}", flush=True)
    return 0
