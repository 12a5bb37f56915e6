"""Which CPU the worker's threads are held on (placement.py): the figures it reads and
the choice it makes from them."""

from __future__ import annotations

import os

import pytest

from feedhook import placement
from feedhook.placement import MOVE_MARGIN, TICKS, CpuTimes, choose, others_load, read_cpu_times

STAT = """cpu  900 0 300 5000 10 0 20 0 0 0
cpu0 500 0 100 2000 5 0 10 0 0 0
cpu1 400 0 200 3000 5 0 10 30 0 0
intr 12345 0 0
ctxt 999
"""


def test_busy_time_per_cpu_is_all_but_idle_and_io_wait() -> None:
    times = read_cpu_times(STAT)
    # user + nice + system + irq + softirq + steal, in seconds; the "cpu" total is not a CPU
    assert times.busy == {0: 610 / TICKS, 1: 640 / TICKS}


def test_the_load_of_others_leaves_out_this_process_on_its_cpu() -> None:
    before = CpuTimes({0: 10.0, 1: 10.0}, at=100.0)
    after = CpuTimes({0: 19.0, 1: 12.0}, at=110.0)
    # 8 of CPU 0's 9 busy seconds were this process's own
    loads = others_load(before, after, own=8.0, on=0)
    assert loads == pytest.approx({0: 0.1, 1: 0.2})


def test_a_cpu_that_appears_between_readings_counts_from_zero_load() -> None:
    loads = others_load(CpuTimes({0: 1.0}, 0.0), CpuTimes({0: 2.0, 1: 5.0}, 1.0), 0.0, 0)
    assert loads == {0: 1.0, 1: 0.0}


@pytest.mark.parametrize(
    ("loads", "current", "expected"),
    [
        ({0: 0.1, 1: 0.0}, 0, 0),  # a little lighter is not worth a move
        ({0: 0.9, 1: 0.2}, 0, 1),  # other work crowds CPU 0: to the freer one
        ({0: 0.9, 1: 0.7, 2: 0.1}, 0, 2),  # the freest of those allowed
        ({0: 0.9, 1: 0.9 - MOVE_MARGIN}, 0, 1),  # exactly the margin lighter
        ({0: 0.0, 1: 0.0}, 1, 1),  # all quiet: stays
    ],
)
def test_the_worker_moves_only_for_a_clearly_freer_cpu(
    loads: dict[int, float], current: int, expected: int
) -> None:
    assert choose(loads, frozenset(loads), current) == expected


def test_a_cpu_it_may_not_use_is_never_chosen() -> None:
    assert choose({0: 0.9, 1: 0.0, 2: 0.5}, frozenset({0, 2}), 0) == 2
    # held on a CPU no longer allowed (a narrowed cpuset): the freest allowed one...
    assert choose({0: 0.0, 2: 0.6, 3: 0.1}, frozenset({2, 3}), 0) == 3
    # ...and one taken offline (gone from /proc/stat), however little the margin
    assert choose({0: 0.2, 1: 0.1}, frozenset({0, 1, 2}), 2) == 1
    # nothing read: the first allowed one
    assert choose({}, frozenset({2, 3}), 0) == 2


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux and two CPUs to use",
)
def test_this_machines_own_figures_read() -> None:
    times = read_cpu_times()
    assert set(os.sched_getaffinity(0)) <= set(times.busy)
    assert placement.running_on() in times.busy


async def test_the_worker_moves_when_other_work_crowds_its_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every look, the load of everything else per CPU decides: here another program
    takes 0.9 of CPU 0 (where the worker is) while CPU 1 idles, so it moves, once."""
    readings = [
        CpuTimes({0: 0.0, 1: 0.0}, at=0.0),
        CpuTimes({0: 9.5, 1: 0.5}, at=10.0),  # the worker's own 0.5 s on CPU 0 aside
        CpuTimes({0: 10.0, 1: 6.0}, at=20.0),  # now on CPU 1, with 5 s of its own
    ]

    def read() -> CpuTimes:
        if not readings:
            raise OSError("no more readings")  # the look ends as /proc unreadable ends it
        return readings.pop(0)

    own = iter([0.0, 0.5, 5.5])
    monkeypatch.setattr(placement, "read_cpu_times", read)
    monkeypatch.setattr(placement, "own_seconds", lambda: next(own))
    monkeypatch.setattr(placement, "LOOK_EVERY", 0.0)
    moves: list[int] = []

    class Recorded(placement.Placement):
        def hold(self, cpu: int | None = None) -> bool:
            assert cpu is not None
            moves.append(cpu)
            self.cpu = cpu
            return True

    held = Recorded(frozenset({0, 1}))
    held.cpu = 0
    await held.run()
    assert moves == [1]  # and stays: CPU 0 is no freer than CPU 1 by the margin
