"""Join secrets never reach output: both flag forms, all three flags, echoed values, token shapes."""

import pytest

from nodemedic.flows.masking import MASK, Masker, secret_values

TOKEN = "abcdef.0123456789abcdef"
HASH = "sha256:" + "7c" * 32
KEY = "f" * 64


def command(form: str) -> list[str]:
    if form == "space":
        return ["kubeadm", "join", "10.0.0.1:6443", "--token", TOKEN, "--discovery-token-ca-cert-hash", HASH,
                "--certificate-key", KEY, "--control-plane"]
    return ["kubeadm", "join", "10.0.0.1:6443", f"--token={TOKEN}", f"--discovery-token-ca-cert-hash={HASH}",
            f"--certificate-key={KEY}"]


@pytest.mark.parametrize("form", ["space", "equals"])
def test_all_three_flags_are_masked_in_the_displayed_command_and_the_original_is_unchanged(form):
    argv = command(form)
    original = list(argv)
    shown = Masker(argv).command(argv)
    for secret in (TOKEN, HASH, KEY):
        assert secret not in shown
    assert shown.count(MASK) == 3
    assert "10.0.0.1:6443" in shown and "kubeadm join" in shown
    assert argv == original  # what runs is exactly what the operator gave
    assert set(secret_values(argv)) == {TOKEN, HASH, KEY}


@pytest.mark.parametrize("form", ["space", "equals"])
def test_values_echoed_in_output_are_masked_wherever_they_appear(form):
    masker = Masker(command(form))
    line = f"I1120 discovery using {HASH} and token {TOKEN}; key={KEY}"
    masked = masker.text(line)
    assert TOKEN not in masked and HASH not in masked and KEY not in masked
    assert masked.startswith("I1120 discovery using ")


@pytest.mark.parametrize("line", [
    "kubeadm join 10.0.0.1:6443 --token zzzzzz.yyyyyyyyyyyyyyyy --discovery-token-ca-cert-hash sha256:00ff",
    "kubeadm join 10.0.0.1:6443 --token=zzzzzz.yyyyyyyyyyyyyyyy --discovery-token-ca-cert-hash=sha256:00ff",
    "--certificate-key 0123abcd --token\tqqqqqq.wwwwwwwwwwwwwwww",
])
def test_flags_in_text_are_masked_even_when_the_values_were_not_on_our_command_line(line):
    masked = Masker().text(line)
    for secret in ("zzzzzz.yyyyyyyyyyyyyyyy", "sha256:00ff", "0123abcd", "qqqqqq.wwwwwwwwwwwwwwww"):
        assert secret not in masked


def test_a_bootstrap_token_shape_is_masked_on_its_own():
    assert Masker().text("using token abcdef.0123456789abcdef now") == f"using token {MASK} now"


def test_journal_fields_are_masked():
    masker = Masker(command("space"))
    fields = masker.fields({"command": " ".join(command("space")), "attempt": 2, "none": None})
    assert TOKEN not in fields["command"] and fields["attempt"] == "2" and fields["none"] is None


def test_a_trailing_flag_without_value_does_not_break_masking():
    argv = ["kubeadm", "join", "--token"]
    assert Masker(argv).argv(argv) == ["kubeadm", "join", "--token"]


def test_the_join_command_reaches_the_reexecuted_process_through_a_pipe_not_its_command_line():
    """journald records every logging process's _CMDLINE: nodemedic join re-executes itself with
    the command in an inherited pipe, so its own command line never carries the token."""
    import argparse
    import json
    import os

    from nodemedic.flows.commands import _argv_from_fd, reexec_argv

    argv = command("space")
    args = argparse.Namespace(root="/tmp/node", dry_run=True, argv_fd=None)
    read_end, write_end = os.pipe()
    os.write(write_end, json.dumps(argv).encode())
    os.close(write_end)
    new = reexec_argv(args, read_end)
    assert new[-4:] == ["join", "--dry-run", "--argv-fd", str(read_end)] and "--root" in new
    assert not any(secret in " ".join(new) for secret in (TOKEN, HASH, KEY))
    assert _argv_from_fd(read_end) == argv
