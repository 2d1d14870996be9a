"""Which seqs of a station session are stored: a watermark plus the few above it. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SeqLedger:
    """Every seq ≤ ``watermark`` is stored (or declared dropped); ``above`` holds the rest.

    Seqs start at 1, so an empty ledger has watermark 0.
    """

    watermark: int = 0
    above: set[int] = field(default_factory=set)

    def __contains__(self, seq: int) -> bool:
        return seq <= self.watermark or seq in self.above

    def add(self, seq: int) -> bool:
        """Record ``seq``; False when it was already there (a duplicate)."""
        if seq == self.watermark + 1 and not self.above:
            self.watermark = seq  # the next one, nothing waiting above: most of the time
            return True
        if seq in self:
            return False
        self.above.add(seq)
        self._advance()
        return True

    def add_range(self, first: int, last: int) -> int:
        """Record every seq in ``first..last`` (declared dropped); returns how many were new."""
        first = max(first, self.watermark + 1)
        if last < first:
            return 0
        new = 0
        if first == self.watermark + 1:
            new = (last - first + 1) - sum(1 for s in self.above if first <= s <= last)
            self.above = {s for s in self.above if s > last}
            self.watermark = last
        else:
            for seq in range(first, last + 1):
                if seq not in self.above:
                    self.above.add(seq)
                    new += 1
        self._advance()
        return new

    def gaps(self) -> list[tuple[int, int]]:
        """Missing ranges below the highest seq seen (what a resend should ask for)."""
        if not self.above:
            return []
        missing: list[tuple[int, int]] = []
        expected = self.watermark + 1
        for seq in sorted(self.above):
            if seq > expected:
                missing.append((expected, seq - 1))
            expected = seq + 1
        return missing

    def _advance(self) -> None:
        while self.watermark + 1 in self.above:
            self.watermark += 1
            self.above.discard(self.watermark)
