from nodemedic.repairs.cgroup import set_systemd_cgroup

OPERATOR_CONFIG = '''\
# operator's containerd config: keep every line
version = 2
root = "/data/containerd"  # moved to the big disk

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    # tuned by ops
    BinaryName = "/usr/local/bin/runc"
    SystemdCgroup = false
'''


def test_round_trip_edit_keeps_every_other_line_and_comment():
    new, changed = set_systemd_cgroup(OPERATOR_CONFIG)
    assert changed
    assert new == OPERATOR_CONFIG.replace("SystemdCgroup = false", "SystemdCgroup = true")
    assert set_systemd_cgroup(new) == (new, False)


def test_missing_tables_are_added_for_v2_and_v3_configs():
    new, changed = set_systemd_cgroup('version = 2\n# empty otherwise\n')
    assert changed and "# empty otherwise" in new
    assert '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]' in new
    assert "SystemdCgroup = true" in new
    new3, _ = set_systemd_cgroup("version = 3\n")
    assert "io.containerd.cri.v1.runtime" in new3 and "SystemdCgroup = true" in new3
