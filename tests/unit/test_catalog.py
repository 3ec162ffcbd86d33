import re

from nodemedic.report.journal import Kind
from tests.conftest import REPO


def test_every_message_id_has_a_catalog_entry_and_ids_are_unique():
    text = (REPO / "units" / "nodemedic.catalog").read_text()
    entries = re.findall(r"^-- ([0-9a-f]{32})\nSubject: (.+)$", text, re.M)
    ids = [i for i, _ in entries]
    assert len(ids) == len(set(ids))
    assert set(ids) == {k.value for k in Kind}
    assert len({k.value for k in Kind}) == len(Kind)
