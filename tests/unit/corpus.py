"""The fail2ban-style sample corpus, tests/corpus/<signature id>.log, and its renderings.

Lines are `+ MESSAGE` (must match the file's signature), `- MESSAGE` (must not) or `# comment`;
blocks appended later (captured real lines) start with a `# provenance` comment and use the
same markers. The directory is the list of signatures: every *.log but the start-up negatives.

Version spans: a block headed `# src: <component> v<from>..v<to> <file>: <note>` says its lines
are what that component writes in those releases (the format string read at those tags, or
"unchanged from vX to vY"); `# absent: <component> v<from>..v<to>: <why>` says those releases
never write this failure. The headers are the list: the tests check that, for each unit a
signature trusts, the spans of its `+` blocks and absences cover every supported release line.

Every sample is also rendered into the other formats its producer can write (klog JSON for a
klog line, logrus JSON for a logrus line, the klog line with its header cut off as users paste
it): one signature must recognise a failure in every format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from nodemedic.detector.decode import Record, decode
from tests.conftest import REPO

CORPUS_DIR = REPO / "tests" / "corpus"
# The shipped signatures: this directory is the list of them, no id is written down elsewhere.
SIGNATURES_DIR = REPO / "etc" / "nodemedic" / "signatures.d"
# Real containerd start-up output, every line of which must match no signature.
STARTUP_NEGATIVES = CORPUS_DIR / "containerd-startup-real.log"
TEXT_FORMATS = {"klog": "klog", "klog-structured": "klog", "logfmt": "logrus", "text": "text"}
# Supported release lines per component (issue 16: kubelet 1.20-1.36, containerd 1.6-2.3).
RELEASES = {
    "kubelet": tuple((1, minor) for minor in range(20, 37)),
    "kubeadm": tuple((1, minor) for minor in range(20, 37)),
    "containerd": ((1, 6), (1, 7), (2, 0), (2, 1), (2, 2), (2, 3)),
}
# Which component writes the lines a unit's journal carries.
COMPONENT_OF_UNIT = {"kubelet.service": "kubelet", "containerd.service": "containerd", "kubeadm": "kubeadm"}
_SPAN = re.compile(r"# (src|absent): (\w+) v(\d+)\.(\d+)\.\.v(\d+)\.(\d+)[ :]")


@dataclass(frozen=True)
class Span:
    """Releases `first`..`last` (inclusive) of `component`, from a `# src:`/`# absent:` header."""

    component: str
    first: tuple[int, int]
    last: tuple[int, int]
    absent: bool
    line: int

    def releases(self) -> set[tuple[int, int]]:
        return {r for r in RELEASES.get(self.component, ()) if self.first <= r <= self.last}


def parse_span(raw: str, line: int) -> Span | None:
    found = _SPAN.match(raw)
    if found is None:
        return None
    kind, component, *numbers = found.groups()
    a, b, c, d = (int(n) for n in numbers)
    return Span(component, (a, b), (c, d), kind == "absent", line)


@dataclass(frozen=True)
class Sample:
    path: Path
    line: int
    expect_match: bool
    message: str
    rendering: str = "as written"
    span: Span | None = field(default=None, compare=False)  # the `# src:` header over its block

    def where(self) -> str:
        suffix = "" if self.rendering == "as written" else f" ({self.rendering})"
        return f"{self.path.name}:{self.line}{suffix}"


def read_corpus(path: Path) -> list[Sample]:
    samples = []
    span: Span | None = None
    after_sample = False
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        if raw.startswith("#"):
            if after_sample:  # a comment after samples starts the next block
                span, after_sample = None, False
            if raw.startswith(("# src:", "# absent:")):
                span = parse_span(raw, number)
                if span is None or span.component not in RELEASES:
                    raise ValueError(f"{path}:{number}: want '# src|absent: <{'|'.join(RELEASES)}> vA.B..vC.D ...'")
            continue
        marker, _, message = raw.partition(" ")
        if marker not in ("+", "-"):
            raise ValueError(f"{path}:{number}: corpus lines start with '+ ', '- ' or '#'")
        samples.append(Sample(path, number, marker == "+", message, span=span))
        after_sample = True
    return samples


def read_spans(path: Path) -> list[Span]:
    """Every `# src:`/`# absent:` header of a corpus file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [s for n, raw in enumerate(lines, start=1) if (s := parse_span(raw, n)) is not None]


def read_plain(path: Path) -> list[Sample]:
    return [Sample(path, n, False, line) for n, line in enumerate(path.read_text().splitlines(), start=1)
            if line.strip() and not line.startswith("#")]


def signature_ids() -> list[str]:
    """Every shipped signature, read off signatures.d (test_corpus checks the corpus directory
    names the same ones)."""
    return sorted(p.stem for p in SIGNATURES_DIR.glob("*.toml"))


def corpus_ids() -> list[str]:
    return sorted(p.stem for p in CORPUS_DIR.glob("*.log") if p != STARTUP_NEGATIVES)


def _go_json(value: dict[str, object], escape_html: bool) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if escape_html:  # encoding/json's default, which logrus' JSONFormatter keeps
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text


def klog_json(record: Record) -> str:
    """As kubelet --logging-format=json writes it (component-base/logs/json, zap)."""
    data: dict[str, object] = {"ts": 1732000000123.4567, "caller": record.source or "kubelet/kubelet.go:1"}
    data["msg"] = record.msg
    if record.level in ("info", "warning"):
        data["v"] = 0
    for key, value in record.fields:
        data[key] = value
    return _go_json(data, escape_html=False)


def logrus_json(record: Record) -> str:
    """As containerd with `[debug] format = "json"` writes it: logrus JSONFormatter, keys sorted."""
    data = dict(record.fields)
    data["level"] = record.level or "info"
    data["msg"] = record.msg
    data.setdefault("time", "2026-11-30T10:00:00.000000000Z")
    return _go_json(dict(sorted(data.items())), escape_html=True)


def headerless(line: str) -> str | None:
    """The klog line without `E0416 22:26:30.150357   10125 file.go:NNN] ` (pasted lines)."""
    end = line.find("] ")
    return line[end + 2:] if end > 0 else None


def renderings(sample: Sample) -> list[Sample]:
    """The sample in every other format its producer can write."""
    record = decode(sample.message)
    family = TEXT_FORMATS.get(record.format)
    out = []
    if family == "klog":
        out.append(replace(sample, message=klog_json(record), rendering="klog JSON"))
        cut = headerless(sample.message)
        if cut is not None:
            out.append(replace(sample, message=cut, rendering="klog header cut off"))
    elif family == "logrus" and sample.message.startswith(("time=", "level=")):
        out.append(replace(sample, message=logrus_json(record), rendering="logrus JSON"))
    return out


def formats_of(samples: list[Sample]) -> set[str]:
    return {decode(s.message).format for s in samples}
