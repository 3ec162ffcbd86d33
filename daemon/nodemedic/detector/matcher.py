"""Match journal MESSAGEs against the catalogue, cheaply for the common non-matching line.

Most lines match nothing. Each signature carries a plain `literal` every matching line
contains; one Aho-Corasick automaton per source (unit, origin) finds, in a single pass over the
line, which literals occur, so the regexes only run for the rare line that already contains a
signature's literal, and the cost per line does not grow with the size of the catalogue.
Only such a line is decoded (decode.py) and judged by the candidates' patterns.

In front of the automaton, each source has a gate: its literals as one RE2 alternation run on
the line's UTF-8 bytes. It answers only "does any literal occur", but RE2's DFA does that in
about 60 % of the automaton's time (measured, bench/RESULTS.md), and for the ~99 % of lines that
hold no literal that is the whole cost; the automaton runs only to name the candidates.
"""

from __future__ import annotations

from collections.abc import Iterable

import ahocorasick

from nodemedic.detector.decode import Record, decode
from nodemedic.detector.patterns import Pattern
from nodemedic.detector.signatures import Signature, Verdict

ANY_SOURCE = ("", "")


def as_text(message: str | bytes) -> str:
    """journald hands out bytes for MESSAGEs that are not UTF-8; never fail on them."""
    if isinstance(message, bytes):
        return message.decode("utf-8", errors="replace")
    return message


def _automaton(signatures: Iterable[tuple[int, Signature]]) -> ahocorasick.Automaton | None:
    by_literal: dict[str, list[int]] = {}
    for index, signature in signatures:
        for literal in signature.literals:
            by_literal.setdefault(literal, []).append(index)
    if not by_literal:
        return None
    automaton = ahocorasick.Automaton()
    for literal, indices in by_literal.items():
        automaton.add_word(literal, tuple(indices))
    automaton.make_automaton()
    return automaton


def _escaped(literal: str) -> str:
    """The literal as an RE2 pattern: every ASCII non-alphanumeric as \\xHH, nothing left special."""
    return "".join(c if c.isalnum() or ord(c) > 0x7F else f"\\x{ord(c):02x}" for c in literal)


def _gate(signatures: Iterable[tuple[int, Signature]]) -> Pattern | None:
    literals = sorted({literal for _index, signature in signatures for literal in signature.literals})
    return Pattern("|".join(_escaped(literal) for literal in literals)) if literals else None


def _utf8(text: str) -> bytes:
    # surrogatepass: a str with a lone surrogate must not raise; no literal holds one
    return text.encode("utf-8", errors="surrogatepass")


class Matcher:
    def __init__(self, signatures: Iterable[Signature]) -> None:
        self.signatures = tuple(signatures)
        sources: dict[tuple[str, str], list[tuple[int, Signature]]] = {ANY_SOURCE: []}
        for index, signature in enumerate(self.signatures):
            sources[ANY_SOURCE].append((index, signature))
            for unit in signature.units:
                sources.setdefault((unit, signature.origin), []).append((index, signature))
        self._automata = {source: _automaton(members) for source, members in sources.items()}
        self._gates = {source: _gate(members) for source, members in sources.items()}

    def units(self) -> frozenset[str]:
        return frozenset(unit for unit, _origin in self._automata if unit)

    def any_literal(self, text: str) -> bool:
        """False when no signature at all can match: the common, cheap case."""
        automaton = self._automata[ANY_SOURCE]
        return automaton is not None and next(automaton.iter(text), None) is not None

    def could_match(self, text: str, unit: str, origin: str) -> bool:
        """False when no signature for this source can match."""
        automaton = self._automata.get((unit, origin))
        return automaton is not None and next(automaton.iter(text), None) is not None

    def _candidates(self, text: str, unit: str | None, origin: str) -> list[int]:
        automaton = self._automata.get(ANY_SOURCE if unit is None else (unit, origin))
        if automaton is None:
            return []
        candidates: set[int] = set()
        for _end, indices in automaton.iter(text):
            candidates.update(indices)
        return sorted(candidates)

    def match(self, message: str | bytes, unit: str | None = None, origin: str = "unit") -> list[Signature]:
        """Signatures matching `message`; `unit=None` tries every signature regardless of unit."""
        # inline, not _candidates(): this runs for every watched line, nearly all matching nothing
        source = ANY_SOURCE if unit is None else (unit, origin)
        gate = self._gates.get(source)
        if gate is None:
            return []
        if isinstance(message, bytes):
            if not gate.found(message):  # journald's bytes are UTF-8 where they matter
                return []
            text = as_text(message)
        else:
            text = message
            if not gate.found(_utf8(text)):
                return []
        candidates: set[int] = set()
        for _end, indices in self._automata[source].iter(text):
            candidates.update(indices)
        if not candidates:  # the bytes held a literal the replaced text lost
            return []
        record = decode(text)  # once per line, for every candidate
        return [self.signatures[i] for i in sorted(candidates) if self.signatures[i].judge(text, record).hit]

    def explain(self, message: str | bytes, unit: str | None = None,
                origin: str = "unit") -> tuple[Record, list[tuple[Signature, Verdict]]]:
        """The decoded record and, for every signature this source watches, why it did or did not hit."""
        text = as_text(message)
        record = decode(text)
        candidates = set(self._candidates(text, unit, origin))
        verdicts = []
        for index, signature in enumerate(self.signatures):
            if unit is not None and (unit not in signature.units or origin != signature.origin):
                continue
            if index in candidates:
                verdicts.append((signature, signature.judge(text, record, explain=True)))
            else:
                shown = " or ".join(repr(literal) for literal in signature.literals)
                verdicts.append((signature, Verdict(False, f"literal {shown} is not in the line")))
        return record, verdicts
