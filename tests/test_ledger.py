"""The seq ledger that makes storage idempotent."""

from hypothesis import given
from hypothesis import strategies as st

from kioskfleet.controller.ledger import SeqLedger


@given(st.lists(st.integers(min_value=1, max_value=60), max_size=120))
def test_each_seq_is_new_exactly_once(seqs: list[int]) -> None:
    ledger = SeqLedger()
    new = [s for s in seqs if ledger.add(s)]
    assert sorted(new) == sorted(set(seqs))
    assert all(s in ledger for s in seqs)
    contiguous = 0
    while contiguous + 1 in set(seqs):
        contiguous += 1
    assert ledger.watermark == contiguous
    assert ledger.above == {s for s in set(seqs) if s > contiguous}


@given(
    st.lists(st.integers(min_value=1, max_value=40), max_size=40),
    st.integers(1, 40),
    st.integers(0, 20),
)
def test_declared_ranges_count_once(seqs: list[int], first: int, length: int) -> None:
    ledger = SeqLedger()
    for s in seqs:
        ledger.add(s)
    before = {s for s in range(1, 80) if s in ledger}
    new = ledger.add_range(first, first + length - 1)
    after = {s for s in range(1, 80) if s in ledger}
    assert after == before | set(range(first, first + length))
    assert new == len(after - before)


def test_gaps() -> None:
    ledger = SeqLedger()
    for s in (1, 2, 5, 6, 9):
        ledger.add(s)
    assert ledger.gaps() == [(3, 4), (7, 8)]
