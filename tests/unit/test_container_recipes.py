"""docker/compose.pipeline.yaml: the shape that makes a FUSE mount in one container visible
to an unprivileged pipeline container (propagation rshared -> rslave).  Nothing is started."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.pipeline.yaml"


def _services():
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _bind(service, target):
    return next(v for v in service["volumes"] if isinstance(v, dict) and v["target"] == target)


def test_mount_container_has_what_fuse_needs_and_shares_the_mount():
    x = _services()["xnatfs"]
    assert "/dev/fuse:/dev/fuse" in x["devices"] and "SYS_ADMIN" in x["cap_add"]
    assert "apparmor:unconfined" in x["security_opt"]
    assert _bind(x, "/mnt/xnat")["bind"]["propagation"] == "rshared"
    assert "allow_other" in x["command"]
    # credentials are interpolated from the environment, never literal
    assert all(v.startswith("${") for k, v in x["environment"].items() if "PASSWORD" in k)


def test_mount_command_parses_with_the_cli():
    from xnatfs.cli import build_parser

    cmd = [re.sub(r"\$\{XNAT_URL:-([^}]*)\}", r"\1", c) for c in _services()["xnatfs"]["command"]]
    args = build_parser().parse_args(cmd)
    assert args.command == "mount" and args.max_requests == 8 and args.read_only
    assert args.mountpoint.startswith("/mnt/xnat/")


def test_pipeline_is_unprivileged_and_follows_remounts():
    p = _services()["pipeline"]
    assert "devices" not in p and "cap_add" not in p and "privileged" not in p
    b = _bind(p, "/xnat")
    assert b["source"] == _bind(_services()["xnatfs"], "/mnt/xnat")["source"]
    assert b["bind"]["propagation"] == "rslave" and b["read_only"] is True
    assert p["depends_on"]["xnatfs"]["condition"] == "service_healthy"
