"""contrib/kubernetes/: the manifests validate against a pinned Kubernetes API (strict: an
unknown or misspelt field fails) with ``kubernetes-validate`` (PyPI, test extra), which bundles
its schemas: nothing is fetched.  Plus the shape the recipe depends on."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List

import pytest

yaml = pytest.importorskip("yaml")
kv = pytest.importorskip(
    "kubernetes_validate",
    reason="!!! kubernetes-validate is missing: the Kubernetes manifests are NOT validated "
    "(pip install 'kubernetes-validate>=1.31,<2') !!!",
)

#: the Kubernetes version the manifests are written for (bundled schema; bump deliberately)
K8S_VERSION = "1.31.0"
K8S = Path(__file__).resolve().parents[2] / "contrib" / "kubernetes"
FILES = sorted(p.name for p in K8S.glob("*.yaml"))


def _docs(name: str) -> List[Dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_there_are_manifests():
    assert {"daemonset.yaml", "pod-example.yaml", "secret.example.yaml"} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_manifest_validates(name):
    for doc in _docs(name):
        kv.validate(doc, K8S_VERSION, strict=True)


def test_validation_would_catch_a_mistake():
    (_, ds) = _docs("daemonset.yaml")
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # typo: strict fails
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = "yes"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def _container(doc: Dict) -> Dict:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "DaemonSet" else doc["spec"]
    return spec["containers"][0]


def test_daemonset_shape():
    ns, ds = _docs("daemonset.yaml")
    assert ns["kind"] == "Namespace" and ds["kind"] == "DaemonSet"
    c = _container(ds)
    # the mount made in the container reaches the host only with Bidirectional, which needs
    # a privileged container
    xnat = next(v for v in c["volumeMounts"] if v["name"] == "xnat")
    assert xnat["mountPropagation"] == "Bidirectional"
    assert c["securityContext"]["privileged"] is True
    # credentials only from the Secret, never inline
    assert c["envFrom"] == [{"secretRef": {"name": "xnatfs-credentials"}}]
    assert not any(e["name"].startswith("XNATFS_") for e in c.get("env", []))
    cmd = c["command"]
    assert cmd[:2] == ["xnatfs", "mount"] and "--foreground" in cmd
    assert "--max-requests" in cmd and "allow_other" in cmd
    # the command parses with the real CLI
    from xnatfs.cli import build_parser

    args = build_parser().parse_args(cmd[1:])
    assert args.max_requests == 8 and args.read_only
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "fusermount3"


def test_pod_example_consumes_the_host_mount():
    (pod,) = _docs("pod-example.yaml")
    (_, ds) = _docs("daemonset.yaml")
    host = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "xnat")
    mine = next(v for v in pod["spec"]["volumes"] if v["name"] == "xnat")
    assert mine["hostPath"]["path"] == host["hostPath"]["path"]
    vm = _container(pod)["volumeMounts"][0]
    assert vm["mountPropagation"] == "HostToContainer" and vm["readOnly"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_secret_example_is_a_placeholder():
    (secret,) = _docs("secret.example.yaml")
    assert secret["kind"] == "Secret"
    assert set(secret["stringData"]) == {"XNATFS_USER", "XNATFS_PASSWORD"}
    assert secret["stringData"]["XNATFS_PASSWORD"] == "change-me"
