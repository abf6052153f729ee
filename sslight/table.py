"""A result table, as the sweeps and the benchmarks report them: markdown on stdout, CSV and a
horizontal bar chart on disk."""

from __future__ import annotations

import csv
from pathlib import Path


def default_cell(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


class Table:
    """Rows of values under ``columns``; a float cell is written by ``number`` (by default whole
    numbers from 100 up, two decimals below), a missing one (None) as "-"."""

    def __init__(self, title: str, columns: list[str], number: str | None = None):
        self.title, self.columns, self.rows, self.number = title, columns, [], number

    def add(self, *values) -> None:
        assert len(values) == len(self.columns), (values, self.columns)
        self.rows.append(values)

    def _cell(self, v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float) and self.number:
            return format(v, self.number)
        return default_cell(v)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", ""] if self.title else []
        lines += ["| " + " | ".join(self.columns) + " |",
                  "| " + " | ".join("---:" if isinstance(v, float) else "---" for v in self.rows[0]) + " |"]
        lines += ["| " + " | ".join(self._cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def print(self) -> None:
        print("\n" + self.markdown() + "\n", flush=True)

    def emit(self, csv_path: str | Path = "") -> "Table":
        """Prints the table, and writes it as CSV where a path is given."""
        self.print()
        if csv_path:
            self.write_csv(csv_path)
        return self

    def write_csv(self, path: str | Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            w.writerows([["" if v is None else f"{v:.6g}" if isinstance(v, float) else v for v in row]
                         for row in self.rows])

    def bar_chart(self, path: str | Path, value: str, labels: list[str]) -> None:
        """One horizontal bar per row: ``value`` against the row's ``labels`` columns joined."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        vi, li = self.columns.index(value), [self.columns.index(c) for c in labels]
        names = [" / ".join(str(row[i]) for i in li) for row in self.rows]
        values = [row[vi] for row in self.rows]
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.2))
        ax.barh(range(len(names)), values)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(value)
        ax.set_title(self.title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
