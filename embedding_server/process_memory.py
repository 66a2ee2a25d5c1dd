"""Resident memory of a process tree: what /health reports, and what the benchmark and the soak sample."""

from __future__ import annotations

import psutil


def tree_rss_bytes(root: psutil.Process) -> tuple[int, int]:
    """The summed RSS of `root` and every process under it, and how many processes were listed; one that exits
    between the listing and the reading adds no bytes."""
    processes = [root, *root.children(recursive=True)]
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total, len(processes)
