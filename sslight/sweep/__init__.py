"""Ablation sweeps: the grid and its runs (grid.py), their placement on the node (schedule.py),
one run in its own process (run.py), and the table and plots (report.py)."""
