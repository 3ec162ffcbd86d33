"""Match journal MESSAGEs against the catalogue, cheaply for the common non-matching line.

Most lines match nothing. Each signature carries a plain `literal` every matching line
contains; `str.__contains__` rejects a line in tens of nanoseconds, so the regexes only run
for the rare line that already contains a signature's literal.
"""

from __future__ import annotations

from collections.abc import Iterable

from nodemedic.detector.signatures import Signature


def as_text(message: str | bytes) -> str:
    """journald hands out bytes for MESSAGEs that are not UTF-8; never fail on them."""
    if isinstance(message, bytes):
        return message.decode("utf-8", errors="replace")
    return message


class Matcher:
    def __init__(self, signatures: Iterable[Signature]) -> None:
        self.signatures = tuple(signatures)
        self._by_source: dict[tuple[str, str], tuple[Signature, ...]] = {}
        for signature in self.signatures:
            for unit in signature.units:
                key = (unit, signature.origin)
                self._by_source[key] = self._by_source.get(key, ()) + (signature,)

    def units(self) -> frozenset[str]:
        return frozenset(unit for unit, _origin in self._by_source)

    def match(self, message: str | bytes, unit: str | None = None, origin: str = "unit") -> list[Signature]:
        """Signatures matching `message`; `unit=None` tries every signature regardless of unit."""
        text = as_text(message)
        candidates = self.signatures if unit is None else self._by_source.get((unit, origin), ())
        return [s for s in candidates if s.literal in text and s.pattern.match(text) is not None]
