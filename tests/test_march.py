"""The merge-walk that pairs two listings (engine/march.py), and its prefetching thread."""

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fitsync.engine.march import CHUNK, ListingOutOfOrder, paired, prefetched, selected
from fitsync.errors import EXIT_FAILED
from fitsync.remotes.base import Entry

NAMES = st.text(alphabet="ab/.-_", min_size=1, max_size=6)


def _entries(names, size=1):
    return [Entry(n, size, 0.0) for n in sorted(names)]


@given(left=st.sets(NAMES, max_size=40), right=st.sets(NAMES, max_size=40))
def test_the_walk_pairs_exactly_as_two_dictionaries_would(left, right):
    a, b = {e.path: e for e in _entries(left, 1)}, {e.path: e for e in _entries(right, 2)}
    walked = list(paired(a.values(), b.values()))
    assert [p for p, _, _ in walked] == sorted(set(a) | set(b))
    for path, x, y in walked:
        assert x is a.get(path) and y is b.get(path)


@given(names=st.lists(NAMES, min_size=2, max_size=20, unique=True))
def test_a_listing_out_of_order_is_refused_not_paired(names):
    shuffled = sorted(names, reverse=True)
    with pytest.raises(ListingOutOfOrder) as caught:
        list(paired(_entries([]) + [Entry(n, 1, 0.0) for n in shuffled], []))
    assert caught.value.exit_code == EXIT_FAILED and "not in path order" in str(caught.value)


def test_a_repeated_path_is_refused():
    with pytest.raises(ListingOutOfOrder):
        list(paired([], [Entry("a", 1, 0.0), Entry("a", 1, 0.0)]))


def test_selection_and_only_paths_filter_the_walk():
    class Odd:
        def matches(self, entry):
            return entry.size % 2 == 1

    entries = [Entry(f"f{i}", i, 0.0) for i in range(6)]
    assert [e.path for e in selected(entries, Odd())] == ["f1", "f3", "f5"]
    assert [e.path for e in selected(entries, Odd(), {"f3", "f4"})] == ["f3"]


@pytest.mark.parametrize("count", [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 7])
def test_prefetching_hands_over_every_entry_in_order(count):
    entries = [Entry(f"{i:08d}", i, 0.0) for i in range(count)]
    assert list(prefetched(lambda: iter(entries))) == entries


def test_a_failing_listing_raises_in_the_walking_thread():
    def listing():
        yield Entry("a", 1, 0.0)
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        list(prefetched(listing))


def test_a_walk_that_stops_early_frees_the_producer_and_holds_a_bounded_number_of_entries():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield Entry(f"{i:012d}", 0, 0.0)
            i += 1

    before = threading.active_count()
    walk = prefetched(endless, name="test-endless")
    assert next(walk).path == "0" * 12
    walk.close()  # the walker leaves: the producer must stop, not run on forever
    for thread in threading.enumerate():
        if thread.name == "test-endless":
            thread.join(timeout=5)
            assert not thread.is_alive()
    assert threading.active_count() <= before
    # The producer stopped within its queue's bound plus one chunk in hand.
    assert len(produced) <= (8 + 2) * CHUNK
