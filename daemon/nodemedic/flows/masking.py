"""Keep join secrets out of every line nodemedic prints or journals.

A bootstrap token lets anyone join a node to the cluster, and the certificate key decrypts the
control plane's certificates; neither may reach the terminal, the journal or a log collector.
The masker knows the values given on the command line (both `--flag value` and `--flag=value`),
masks them wherever they appear later (kubeadm can echo them), and also masks anything shaped
like a bootstrap token, so a secret from a config file or an echoed default is caught too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

SECRET_FLAGS = ("--token", "--discovery-token-ca-cert-hash", "--certificate-key")
MASK = "***"
# kubeadm's bootstrap token format: [a-z0-9]{6}.[a-z0-9]{16}
_TOKEN_SHAPE = re.compile(r"(?<![a-z0-9])[a-z0-9]{6}\.[a-z0-9]{16}(?![a-z0-9])")
_FLAG_FORMS = re.compile(
    r"(?P<flag>" + "|".join(re.escape(f) for f in SECRET_FLAGS) + r")(?P<sep>=|\s+)(?P<value>[^\s\"',]+)")


def secret_values(argv: Sequence[str]) -> tuple[str, ...]:
    """The values of the secret flags in `argv`, in both forms."""
    values = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in SECRET_FLAGS:
            if eq:
                values.append(value)
            elif i + 1 < len(argv):
                values.append(argv[i + 1])
    return tuple(v for v in values if v)


class Masker:
    def __init__(self, argv: Sequence[str] = ()) -> None:
        # Longest first, so a value that contains another is masked whole.
        self._values = tuple(sorted(set(secret_values(argv)), key=len, reverse=True))

    def text(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, MASK)
        text = _FLAG_FORMS.sub(lambda m: f"{m['flag']}{m['sep']}{MASK}", text)
        return _TOKEN_SHAPE.sub(MASK, text)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """A copy of argv for display; the original is what runs, unchanged."""
        out: list[str] = []
        hide_next = False
        for arg in argv:
            name, eq, _value = arg.partition("=")
            if hide_next:
                out.append(MASK)
                hide_next = False
            elif name in SECRET_FLAGS and eq:
                out.append(f"{name}={MASK}")
            else:
                hide_next = arg in SECRET_FLAGS
                out.append(self.text(arg))
        return out

    def command(self, argv: Sequence[str]) -> str:
        return " ".join(self.argv(argv))

    def fields(self, fields: dict[str, object]) -> dict[str, object]:
        return {k: None if v is None else self.text(str(v)) for k, v in fields.items()}
