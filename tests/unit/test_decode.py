"""The record decoder: every format to (format, level, message, fields), never an exception."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from nodemedic.detector.decode import decode

# Printable text without the characters whose Go quoting differs from JSON's (\x7f, non-BMP).
TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=80)
KEY = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,11}", fullmatch=True).filter(lambda k: k not in ("msg", "level", "time"))


@given(st.text(max_size=300))
def test_decode_never_raises_and_always_has_a_message(line):
    record = decode(line)
    assert isinstance(record.msg, str) and record.format


@given(TEXT, TEXT, KEY)
def test_structured_klog_round_trips_message_and_fields(msg, err, key):
    line = f'E1130 10:00:00.000001    812 kubelet.go:1] {json.dumps(msg)} err={json.dumps(err)} {key}=plain'
    record = decode(line)
    assert (record.format, record.level, record.msg) == ("klog-structured", "error", msg)
    assert record.field("err") == err and record.field(key) == "plain"
    assert record.source == "kubelet.go:1"


@given(TEXT, TEXT)
def test_logfmt_and_its_json_agree(msg, err):
    text = decode(f'time="2026-11-30T10:00:00Z" level=warning msg={json.dumps(msg)} error={json.dumps(err)}')
    as_json = decode(json.dumps({"error": err, "level": "warning", "msg": msg, "time": "2026-11-30T10:00:00Z"}))
    assert (text.format, as_json.format) == ("logfmt", "logrus-json")
    for record in (text, as_json):
        assert (record.level, record.msg, record.field("error")) == ("warning", msg, err)


def test_the_klog_header_and_a_journalctl_prefix_are_optional():
    full = 'E0413 10:53:52.844381    3263 kubelet.go:2055] "Skipping pod synchronization" err="x"'
    for line in (full, 'kubelet.go:2055] "Skipping pod synchronization" err="x"',
                 '"Skipping pod synchronization" err="x"',
                 f"Apr 13 10:53:52 node-1 kubelet[3263]: {full}"):
        record = decode(line)
        assert (record.format, record.msg, record.field("err")) == ("klog-structured", "Skipping pod synchronization",
                                                                    "x"), line


def test_a_go_struct_value_with_spaces_stays_one_field():
    record = decode('I0907 21:49:17.171114    2199 setters.go:548] "Node became not ready" node="minikube" '
                    "condition={Type:Ready Status:False LastHeartbeatTime:2023-09-07 21:49:17 +0000 UTC "
                    "m=+1962.58 Message:PLEG is not healthy: pleg was last seen active 3m1s ago} next=1")
    assert record.field("condition") == ("{Type:Ready Status:False LastHeartbeatTime:2023-09-07 21:49:17 +0000 UTC "
                                         "m=+1962.58 Message:PLEG is not healthy: pleg was last seen active 3m1s ago}")
    assert record.field("next") == "1"


def test_logrus_terminal_form_splits_message_from_fields():
    record = decode('ERRO[0000] failed to load cni during init, please check CRI plugin status    error="cni x" a=b')
    assert (record.format, record.level) == ("logfmt", "error")
    assert record.msg == "failed to load cni during init, please check CRI plugin status"
    assert record.details() == [("error", "cni x"), ("a", "b")]


def test_klog_json_levels_and_free_text():
    assert decode('{"ts":1.5,"caller":"a/b.go:1","msg":"m","v":0}').level == "info"
    assert decode('{"ts":1.5,"caller":"a/b.go:1","msg":"m","err":"e"}').level == "error"
    assert decode('{"no":"msg"}').format == "text"
    assert decode("[kubelet-check] Initial timeout of 40s passed.").format == "text"


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e).map(lambda c: c), max_size=40))
def test_quoted_values_decode_as_json_would(value):
    """The escaped-quotes-only shortcut and json.loads agree (backslash pairs take the slow path)."""
    line = f'time="2026-11-30T10:00:00Z" level=error msg="m" error={json.dumps(value)}'
    assert decode(line).field("error") == value


def test_a_syslog_prefix_is_still_stripped_when_the_program_name_starts_like_a_record():
    # the prefix regex is skipped only for lines starting as klog, `time=` or JSON
    record = decode('tailscaled[812]: time="2026-11-30T10:00:00Z" level=error msg="boom" error="x"')
    assert (record.format, record.msg, record.field("error")) == ("logfmt", "boom", "x")
    record = decode('Nov 30 12:00:01 node-1 kubelet[812]: E1130 10:00:00.000001    812 kubelet.go:1] "m" err="e"')
    assert (record.format, record.msg, record.field("err")) == ("klog-structured", "m", "e")
