"""How an ingest queues new events: runs per lane, pairs for ordered lanes."""

from __future__ import annotations

from feedhook.store.fanout import Stretches, queue

from conftest import ingest_item


def test_events_routed_alike_make_one_run_per_lane() -> None:
    routed = ("a", "b")
    items = [ingest_item(n, routed) for n in range(1, 6)]
    assert queue(items, [11, 12, 13, 14, 15]).runs == [["a", 11, 15], ["b", 11, 15]]


def test_a_lane_left_out_or_a_gap_in_the_numbers_ends_its_run() -> None:
    shapes = {1: ("a", "b"), 2: ("a",), 3: ("a", "b"), 4: ("a", "b"), 5: ("b",)}
    items = [ingest_item(n, shapes[n]) for n in shapes]
    queued = queue(items, [1, 2, 3, 4, 5])
    assert queued.runs == [["a", 1, 4], ["b", 1, 1], ["b", 3, 5]]
    gapped = queue([ingest_item(n, ("a",)) for n in (1, 2, 3)], [1, 2, 7])
    assert gapped.runs == [["a", 1, 2], ["a", 7, 7]]


def test_an_ordered_lane_gets_a_pair_per_event_with_its_subject() -> None:
    items = [ingest_item(n, ("a", "o"), f"job/{n % 2}", ("o",)) for n in (1, 2, 3)]
    queued = queue(items, [5, 6, 7])
    assert queued.runs == [["a", 5, 7]]
    assert queued.pairs == [(5, "o", "job/1"), (6, "o", "job/0"), (7, "o", "job/1")]


def test_nothing_routed_queues_nothing() -> None:
    assert not queue([ingest_item(n, ()) for n in (1, 2)], [1, 2])
    assert not queue([], [])


def test_stretches_merge_and_answer_membership() -> None:
    held = Stretches([(10, 12), (1, 3), (4, 4), (11, 20), (30, 30)])
    assert held.merged() == [(1, 4), (10, 20), (30, 30)]
    assert [n for n in range(0, 32) if n in held] == [1, 2, 3, 4, *range(10, 21), 30]
    assert 5 not in Stretches([])
