"""Where `feedhook run`'s main process runs its threads: all on one CPU, moved to a freer
one when other work crowds it.

The worker is one Python process. Its event loop, its database thread and its HTTP
client's thread take turns holding the interpreter's lock (the GIL): at most one of them
runs Python at any moment, and every delivery passes the lock between them several
times. On different CPUs, each pass wakes a thread on another CPU, an interrupt between
processors, dear on a virtual machine; on one CPU it is an ordinary switch. Measured on
the 2-core bench machine: the same deliveries for 13-21% less CPU, and delivery
throughput 0.76x the raw client instead of 0.70x (BENCHMARKS.md).

Which CPU: at start, the one the process is running on (the system's own choice). Every
LOOK_EVERY seconds it reads how much of each CPU everything else (the ingest process,
other programs) used, and moves to another CPU it may use if that one was left freer
than its own by at least MOVE_MARGIN of a CPU. The ingest process is not held: it takes
back every CPU the worker was allowed, and the system places it.

Linux only; elsewhere, or with a single CPU to use, nothing is done.
`FEEDHOOK_PIN_WORKER=false` leaves every thread to the system.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("feedhook")

LOOK_EVERY = 10.0
MOVE_MARGIN = 0.25  # of a CPU: the load another CPU must be lighter by to move there
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    """Seconds each CPU spent busy, from /proc/stat, at one moment."""

    busy: Mapping[int, float]
    at: float  # time.monotonic()


def read_cpu_times(stat: str | None = None) -> CpuTimes:
    """Busy seconds per CPU (user, nice, system, irq, softirq and steal: all but idle
    and I/O wait) from /proc/stat, or from `stat`, its text."""
    text = stat if stat is not None else Path("/proc/stat").read_text()
    busy = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit():
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in rest.split()[:8])
        busy[int(name[3:])] = (user + nice + system + irq + softirq + steal) / TICKS
    return CpuTimes(busy, time.monotonic())


def others_load(before: CpuTimes, after: CpuTimes, own: float, on: int) -> dict[int, float]:
    """What everything but this process used of each CPU between two readings, in CPUs:
    `own` seconds of this process's CPU time, all spent on CPU `on`, are taken out."""
    seconds = max(after.at - before.at, 1e-9)
    loads = {}
    for cpu, busy in after.busy.items():
        used = busy - before.busy.get(cpu, busy)
        if cpu == on:
            used -= own
        loads[cpu] = max(used, 0.0) / seconds
    return loads


def choose(loads: Mapping[int, float], allowed: frozenset[int], current: int) -> int:
    """The CPU to be on: the current one, unless an allowed CPU carried less of
    everything else's load by at least MOVE_MARGIN; the freest allowed one if the
    current one is gone (taken offline, or out of a narrowed cpuset)."""
    candidates = [cpu for cpu in sorted(allowed) if cpu in loads]
    if not candidates:
        return current if current in allowed else min(allowed)
    best = min(candidates, key=lambda cpu: loads[cpu])
    if current not in candidates:
        return best
    return best if loads[best] + MOVE_MARGIN <= loads[current] else current


def own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def running_on() -> int:
    """The CPU the calling thread last ran on (/proc/thread-self/stat, field 39)."""
    stat = Path("/proc/thread-self/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[36])


def allowed_cpus() -> frozenset[int]:
    """The CPUs this process may use (its affinity, narrowed by a container's cpuset)."""
    return frozenset(os.sched_getaffinity(0))


def release(cpus: Collection[int]) -> None:
    """Let this process (the ingest process, started by a held worker) use `cpus` again."""
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:  # a cpuset narrowed since: the system's choice stands
            log.debug("could not widen the CPUs of this process: %s", exc)


class Placement:
    """Holds every thread of this process on one CPU, and moves them when another CPU
    it may use has room to spare. `start()` before any thread starts (a new thread takes
    its creator's CPU), then `run()` for as long as the process lives."""

    def __init__(self, allowed: frozenset[int]) -> None:
        self.allowed = allowed
        self.cpu: int | None = None

    @classmethod
    def start(cls) -> Placement | None:
        """Hold this process's threads on the CPU it runs on, where there is a choice to
        make (Linux, two or more CPUs to use); None where there is not."""
        if not hasattr(os, "sched_setaffinity") or not Path("/proc/stat").exists():
            return None
        try:
            placement = cls(allowed_cpus())
            if len(placement.allowed) < 2 or not placement.hold():
                return None
        except (OSError, ValueError) as exc:  # no /proc/thread-self (an old kernel, a sandbox)
            log.debug("the worker's threads are left to the system: %s", exc)
            return None
        log.info(
            "the worker's threads run on CPU %d (one of the %d it may use): they take turns"
            " anyway, and on one CPU each turn costs less (FEEDHOOK_PIN_WORKER=false: the"
            " system places them)",
            placement.cpu,
            len(placement.allowed),
        )
        return placement

    def hold(self, cpu: int | None = None) -> bool:
        """Every thread of this process on `cpu` (by default, the one it runs on now).
        False if the system refused (a container's cpuset narrowed since the start)."""
        if cpu is None:
            cpu = running_on()
            if cpu not in self.allowed:
                cpu = min(self.allowed)
        for task in Path("/proc/self/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), {cpu})
            except ProcessLookupError:
                continue  # a thread that ended meanwhile
            except OSError as exc:
                log.warning("could not keep the worker's threads on CPU %d: %s", cpu, exc)
                return False
        self.cpu = cpu
        return True

    async def run(self) -> None:
        """Every LOOK_EVERY seconds, move to a CPU that everything else leaves freer."""
        try:
            await self._follow_load()
        except (OSError, ValueError) as exc:  # /proc unreadable or unlike Linux's own
            log.warning(
                "stopped looking for a freer CPU for the worker's threads (they stay on CPU"
                " %s): %s",
                self.cpu,
                exc,
            )

    async def _follow_load(self) -> None:
        before, own = read_cpu_times(), own_seconds()
        while True:
            await asyncio.sleep(LOOK_EVERY)
            after, now_own = read_cpu_times(), own_seconds()
            assert self.cpu is not None
            loads = others_load(before, after, now_own - own, self.cpu)
            before, own = after, now_own
            cpu = choose(loads, self.allowed, self.cpu)
            if cpu != self.cpu:
                log.info(
                    "moving the worker's threads from CPU %d to CPU %d: other work took"
                    " %.2f of CPU %d and %.2f of CPU %d",
                    self.cpu,
                    cpu,
                    loads.get(self.cpu, 0.0),
                    self.cpu,
                    loads.get(cpu, 0.0),
                    cpu,
                )
                if not self.hold(cpu):
                    self.allowed -= {cpu}
