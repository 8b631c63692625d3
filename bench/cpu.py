"""CPU time of processes from /proc: what a bench's servers spent over a measured window.

A process's CPU is ``utime + stime`` of /proc/<pid>/stat, plus ``cutime + cstime`` (its children that have
exited and been waited for). Summed over a process and every live descendant, the total only grows: a
child that exits moves its time into its parent's ``cutime``. Two readings around a window give the
CPU-seconds the processes spent in it, whichever of their processes came or went meanwhile. The resolution
is the kernel's clock tick (``SC_CLK_TCK``, 10 ms), so windows should be seconds long.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _Stat:
    pid: int
    comm: str
    ppid: int
    ticks: int  # utime + stime + cutime + cstime


def _stats() -> dict[int, _Stat]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # comm is in parentheses and may hold spaces or parentheses itself: the fields follow its last ')'.
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # fields[0] is the state (field 3 of proc(5)); utime, stime, cutime, cstime are fields 14 to 17.
        ticks = sum(int(value) for value in fields[11:15])
        found[int(entry.name)] = _Stat(int(entry.name), comm, int(fields[1]), ticks)
    return found


def _tree(stats: dict[int, _Stat], root: int) -> set[int]:
    children = defaultdict(list)
    for stat in stats.values():
        children[stat.ppid].append(stat.pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in found:
            found.add(pid)
            todo.extend(children[pid])
    return found


def process_tree(root: int) -> Callable[[dict[int, _Stat]], set[int]]:
    """A process and all its descendants (a ``portal run`` with its web workers)."""
    return lambda stats: _tree(stats, root)


def process_trees(*roots: int) -> Callable[[dict[int, _Stat]], set[int]]:
    """Several processes and all their descendants (the ``portal run`` processes behind one balancer)."""
    return lambda stats: set().union(*(_tree(stats, root) for root in roots))


def only(pid: int) -> Callable[[dict[int, _Stat]], set[int]]:
    """One process without its live children (this bench's own, whose children are the servers it
    started), with the children it has waited for."""
    return lambda stats: {pid} & stats.keys()


def postgres_serving(database: str) -> Callable[[dict[int, _Stat]], set[int]]:
    """The PostgreSQL backends connected to ``database`` (and autovacuum workers on it), by the title each
    sets (``postgres: 15/main: user database host(port) ...``): a shared server's other databases, its
    postmaster and its background writers are left out."""

    def pick(stats: dict[int, _Stat]) -> set[int]:
        found = set()
        for stat in stats.values():
            if stat.comm != "postgres":
                continue
            try:
                title = Path(f"/proc/{stat.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f" {database} " in f"{title} ":
                found.add(stat.pid)
        return found

    return pick


def named(*comms: str) -> Callable[[dict[int, _Stat]], set[int]]:
    """Every process whose name (``comm``) is one of these, with its descendants: a whole service on this
    host (``postgres``: the postmaster and every backend, whoever they serve)."""
    return lambda stats: {
        pid for stat in stats.values() if stat.comm in comms for pid in _tree(stats, stat.pid)
    }


def _host_busy_ticks() -> int:
    """Every CPU's busy time since boot (/proc/stat: user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return user + nice + system + irq + softirq + steal


class CpuMeter:
    """CPU-seconds of groups of processes (name: which processes) between ``start()`` and ``stop()``, and
    how busy the rest of the host was meanwhile (``others_cores``: whatever else runs on it, in cores)."""

    def __init__(self, groups: dict[str, Callable[[dict[int, _Stat]], set[int]]]) -> None:
        self.groups = groups
        self._before: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.others_cores = 0.0

    def _read(self) -> dict[str, int]:
        stats = _stats()
        found = {name: sum(stats[pid].ticks for pid in pick(stats)) for name, pick in self.groups.items()}
        return found | {"": _host_busy_ticks()}

    def start(self) -> None:
        self._before = self._read()
        self._started = time.monotonic()

    def stop(self) -> dict[str, float]:
        after = self._read()
        wall_s = time.monotonic() - self._started
        self.seconds = {name: (after[name] - self._before[name]) * TICK_S for name in self.groups}
        host_s = (after[""] - self._before[""]) * TICK_S
        self.others_cores = max(0.0, host_s - sum(self.seconds.values())) / wall_s if wall_s else 0.0
        return self.seconds


def per_event_ms(seconds: dict[str, float], events: int) -> dict[str, float]:
    """CPU milliseconds per event (a beat) of each group."""
    return {name: spent * 1000 / events for name, spent in seconds.items()} if events else {}
