import re

from nodemedic.journal import Kind
from tests.conftest import REPO


def test_every_message_id_has_a_catalog_entry_and_ids_are_unique():
    text = (REPO / "units" / "nodemedic.catalog").read_text()
    entries = re.findall(r"^-- ([0-9a-f]{32})\nSubject: (.+)$", text, re.M)
    ids = [i for i, _ in entries]
    assert len(ids) == len(set(ids))
    assert set(ids) == {k.value for k in Kind}
    assert len({k.value for k in Kind}) == len(Kind)


def test_the_bus_policy_is_well_formed_and_lets_anyone_ask_for_a_plan():
    import xml.dom.minidom

    # dbus-daemon drops a file it cannot parse (a "--" in a comment is enough) and with it our
    # right to own the name: the API would be gone.
    doc = xml.dom.minidom.parse(str(REPO / "units" / "org.nodemedic1.conf"))
    default = [p for p in doc.getElementsByTagName("policy") if p.getAttribute("context") == "default"]
    members = {a.getAttribute("send_member") for p in default for a in p.getElementsByTagName("allow")
               if a.getAttribute("send_interface") == "org.nodemedic1"}
    assert members == {"Plan"}  # read-only; every steering method stays root's


def test_the_fleet_guard_bus_policy_lets_only_root_ask_for_a_slot():
    import xml.dom.minidom

    doc = xml.dom.minidom.parse(str(REPO / "units" / "org.nodemedic.Kube1.conf"))
    policies = {p.getAttribute("user") or p.getAttribute("context"): p for p in doc.getElementsByTagName("policy")}
    assert "default" not in policies  # nobody but root may take or release the fleet's slots
    root = [a.getAttribute("send_interface") for a in policies["root"].getElementsByTagName("allow")]
    assert "org.nodemedic.Kube1" in root
    owners = {user for user, p in policies.items()
              for a in p.getElementsByTagName("allow") if a.getAttribute("own") == "org.nodemedic.Kube1"}
    assert owners == {"root"}  # nodemedic-kube.service runs as root (test_packaging.py ties them)
