"""Where a machine's CPU goes during a measurement, read from /proc (Linux only).

The benchmark machine is shared: the broker and the registry run on it, and so may other people's
work. A figure measured while something else held a core says little about the code, so every
suite can report who used the CPU beside what it measured, instead of leaving the reader to guess.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import NamedTuple

from affluent.core.settings import load_settings

__all__ = [
    "CLOCK_TICKS",
    "CpuLedger",
    "CpuWindow",
    "Ticks",
    "cpu_ticks",
    "process_cpu",
    "stack_pids",
    "stack_processes",
    "thread_cpu",
]


class Ticks(NamedTuple):
    """Machine-wide CPU time from /proc/stat, in clock ticks, summed over all cores."""

    processes: int  # user + nice + system: time spent running processes
    kernel: int  # irq + softirq: mostly network processing here (loopback TCP to the broker)
    steal: int  # time the hypervisor gave to other virtual machines
    total: int

    @property
    def busy(self) -> int:
        return self.processes + self.kernel + self.steal


def cpu_ticks() -> Ticks:
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]] + [0] * 8
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return Ticks(user + nice + system, irq + softirq, steal, total)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def stack_processes() -> dict[str, int]:
    """The local stack's broker(s) and registry by name (``kafka-1``, ``registry``), from the pid
    files `affluent stack` writes."""
    state = load_settings().stack.state_dir
    pids: dict[str, int] = {}
    for pid_file in [*sorted(state.glob("kafka-*/kafka.pid")), state / "registry" / "registry.pid"]:
        with contextlib.suppress(OSError, ValueError):
            pids[pid_file.parent.name] = int(pid_file.read_text().strip())
    return pids


def stack_pids() -> list[int]:
    """The local stack's broker(s) and registry."""
    return list(stack_processes().values())


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, 0 when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            line = stat.read()
    except OSError:
        return 0.0
    fields = line[line.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process by thread group, from /proc/self/task.

    Process CPU alone cannot tell a saturated event loop from busy librdkafka threads, and only
    the former is bound by the GIL; so the server's CPU is split: the event loop (main thread),
    the Python threads by name (producer poller, ACK-cache reader...), librdkafka's native
    threads, and the asyncio.to_thread workers (which here mostly wait on the sender pipe).
    """
    names = {t.native_id: t.name for t in threading.enumerate()}
    main = threading.main_thread().native_id
    groups: dict[str, float] = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat", encoding="ascii", errors="replace") as stat:
                line = stat.read()
        except OSError:
            continue  # the thread ended meanwhile
        comm = line[line.index("(") + 1 : line.rindex(")")]
        fields = line[line.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
        tid = int(task)
        if tid == main:
            group = "event loop"
        elif comm.startswith("rdk:"):
            group = "librdkafka"
        elif tid in names:
            name = names[tid]
            group = "to_thread workers" if name.startswith("asyncio_") else name
        else:
            group = comm
        groups[group] = groups.get(group, 0.0) + seconds
    return groups


class CpuWindow:
    """Who used the CPU between construction and stop(), in fractions of one core.

    ``own`` is this process, ``stack`` the local broker and registry, ``others`` every other
    process (less ``known`` seconds passed to stop(), e.g. a child process's own count), ``kernel``
    interrupt handling and ``steal`` the hypervisor; ``idle`` is what was left of all cores.
    """

    def __init__(self) -> None:
        self._stack = stack_pids()
        self._start = self._sample()
        self.wall_s = self.own = self.stack = self.others = self.kernel = self.steal = self.idle = 0.0

    def _sample(self) -> tuple[float, float, float, Ticks]:
        times = os.times()
        stack = sum(process_cpu(pid) for pid in self._stack)
        return (time.perf_counter(), times.user + times.system, stack, cpu_ticks())

    def stop(self, known: float = 0.0) -> CpuWindow:
        wall0, own0, stack0, ticks0 = self._start
        wall1, own1, stack1, ticks1 = self._sample()
        wall = self.wall_s = wall1 - wall0
        self.own = (own1 - own0) / wall
        self.stack = (stack1 - stack0) / wall
        processes = (ticks1.processes - ticks0.processes) / CLOCK_TICKS / wall
        self.others = max(0.0, processes - self.own - self.stack - known / wall)
        self.kernel = (ticks1.kernel - ticks0.kernel) / CLOCK_TICKS / wall
        self.steal = (ticks1.steal - ticks0.steal) / CLOCK_TICKS / wall
        idle_ticks = (ticks1.total - ticks0.total) - (ticks1.busy - ticks0.busy)
        self.idle = idle_ticks / CLOCK_TICKS / wall
        return self


class CpuLedger:
    """CPU seconds of named processes between construction and stop(), plus the kernel's network work
    and whatever else ran: divided by the messages of the run, it says what one message costs where.

    A process that exits meanwhile counts up to its last reading (0 after), so ``stop`` must come
    before the processes are stopped.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._start = {name: process_cpu(pid) for name, pid in self.pids.items()}
        self._ticks = cpu_ticks()
        self.seconds: dict[str, float] = {}
        self.kernel_s = self.others_s = 0.0

    def stop(self) -> CpuLedger:
        ticks = cpu_ticks()
        self.seconds = {
            name: max(0.0, process_cpu(pid) - self._start[name]) for name, pid in self.pids.items()
        }
        processes = (ticks.processes - self._ticks.processes) / CLOCK_TICKS
        self.kernel_s = (ticks.kernel - self._ticks.kernel) / CLOCK_TICKS
        self.others_s = max(0.0, processes - sum(self.seconds.values()))
        return self
