"""The optional TOML configuration file and the precedence of every setting's sources.

``$XDG_CONFIG_HOME/xnatfs/config.toml`` (``~/.config/xnatfs/config.toml``), or the file named by
``--config PATH`` / ``$XNATFS_CONFIG``::

    [defaults]
    cache_size = "20G"
    listing_ttl = 120

    [servers."https://xnat.example.org"]
    netrc = "~/.netrc-xnat"
    max_threads = 32

The keys are the long options of ``xnatfs mount`` with ``_`` for ``-`` (see :data:`KEYS`), plus
``user``/``password``.  Precedence, highest first (:func:`effective_settings`):

1. the command line (only the options the user actually typed),
2. the environment, ``XNATFS_<KEY>`` (``XNATFS_CACHE_SIZE=50G``; ``XNATFS_USER`` and
   ``XNATFS_PASSWORD`` are the variables ``xnat/auth.py`` already reads),
3. the file: the server's table, then ``[defaults]``,
4. the built-in defaults (the table of ``xnatfs/settings.py``).

Every problem is a :class:`ConfigError` whose message is one line naming the file (and line
where TOML tells it) and the fix; nothing is logged here, the command line prints it.  The
file must be the user's (or root's) and not writable by group or others; one holding a
password must be private (``chmod 600``), like a netrc (:func:`_check_trusted`).

Imports only ``xnatfs.settings`` (the keys, their types and defaults); no I/O beyond reading
the one file.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

from xnatfs.settings import BY_NAME, CONFIG_SETTINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

#: precedence sources, as shown by ``xnatfs config``
SOURCE_CLI = "command line"
SOURCE_ENV = "environment"
SOURCE_FILE = "config file"
SOURCE_DEFAULT = "default"

#: prefix of the environment variables that set a key (``XNATFS_CACHE_SIZE``)
ENV_PREFIX = "XNATFS_"
#: environment variable naming the config file (like ``--config``)
ENV_CONFIG = "XNATFS_CONFIG"
#: keys whose values are never shown
SECRET_KEYS = frozenset({"password"})
MASK = "********"


class ConfigError(Exception):
    """A configuration problem the user can fix; ``str()`` is one line."""


@dataclass(frozen=True)
class KeySpec:
    #: normalizes a value or raises ValueError with the reason
    convert: Callable[[Any, bool], Any]
    #: built-in default (None: unset)
    default: Any
    #: what a human reads in ``xnatfs config``
    kind: str


#: every key of ``[defaults]`` / ``[servers."URL"]`` / ``XNATFS_<KEY>``: generated from the one
#: table of settings (``xnatfs/settings.py``)
KEYS: Dict[str, KeySpec] = {
    s.name: KeySpec(s.kind.convert, s.default, s.kind.label) for s in CONFIG_SETTINGS
}


def _default(key: str, env: Mapping[str, str]) -> Any:
    if key == "cache_dir":
        # what options.default_cache_dir() gives, but from the env mapping we were handed
        base = env.get("XDG_CACHE_HOME") or os.path.join(
            env.get("HOME") or os.path.expanduser("~"), ".cache"
        )
        return str(Path(base) / "xnatfs")
    return KEYS[key].default


# ------------------------------------------------------------------------------- the file
@dataclass(frozen=True)
class ConfigFile:
    """A parsed and validated config file; empty when there is none."""

    #: the file read, or None when no file exists (the default location is optional)
    path: Optional[Path] = None
    #: ``[defaults]``, normalized values
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: normalized server URL -> that server's table, normalized values
    servers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def for_server(self, url: str) -> Dict[str, Any]:
        """The file's values for ``url``: its server table over ``[defaults]``."""
        merged = dict(self.defaults)
        merged.update(self.servers.get(normalize_url(url), {}))
        return merged


def default_config_path(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".config"
    )
    return Path(base) / "xnatfs" / "config.toml"


def normalize_url(url: str) -> str:
    """Server identity for matching tables: scheme and host lower-cased, no trailing ``/``,
    no default port (``https://X.org:443/xnat/`` == ``https://x.org/xnat``)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port and not ((scheme == "https" and port == 443) or (scheme == "http" and port == 80)):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path.rstrip("/"), "", ""))


def _line_of(text: str, key: str, table: str) -> Optional[int]:
    """Best-effort line number of ``key = ...`` inside ``[table]`` ("" = before any table);
    tomllib reports lines for syntax errors only."""

    def header(line: str) -> str:
        inner = line.strip().lstrip("[").rpartition("]")[0] if "]" in line else line
        return re.sub(r"\s+", "", inner).replace("'", '"')

    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = header(stripped)
            continue
        if current == header(table) and re.match(
            r'["\']?' + re.escape(key) + r'["\']?\s*=', stripped
        ):
            return number
    return None


def _where(path: Path, text: str, key: str, table: str) -> str:
    line = _line_of(text, key, table)
    return f"{path}, line {line}" if line else str(path)


def _check_table(path: Path, text: str, name: str, table: Any) -> Dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {name} must be a table ([{name}])")
    out: Dict[str, Any] = {}
    for key, value in table.items():
        spec = KEYS.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = (
                f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(KEYS)})"
            )
            raise ConfigError(
                f"{_where(path, text, key, name)}: unknown key '{key}' in [{name}]{hint}"
            )
        try:
            out[key] = spec.convert(value, False)
        except ValueError as exc:
            raise ConfigError(
                f"{_where(path, text, key, name)}: [{name}] {key} {exc} "
                f"(got {type(value).__name__} {_show(key, value)})"
            ) from None
    return out


def _show(key: str, value: Any) -> str:
    return MASK if key in SECRET_KEYS else repr(value)


#: largest config file read (a few KiB in practice)
MAX_CONFIG_BYTES = 1 << 20


def _read_toml(file: Path, explicit: bool) -> Optional[Tuple[os.stat_result, str, Dict[str, Any]]]:
    """The config file's (stat, text, parsed TOML), or None for an absent default file."""
    try:
        # O_NONBLOCK: a FIFO at the name must not hold the command for ever (refused below);
        # the checks are of the file read (fstat of its descriptor), never of the name again.
        # /dev/null (XNATFS_CONFIG=/dev/null: no config) stays fine; a device that never ends
        # is cut at the size cap
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                raise ConfigError(f"config file {file} is not a regular file")
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {file} is larger than {MAX_CONFIG_BYTES >> 20} MiB")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {file} does not exist") from None
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
        return st, text, tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: {_toml_message(exc)}") from None


def load_config(
    path: Optional[os.PathLike] = None, env: Mapping[str, str] = os.environ
) -> ConfigFile:
    """Read and validate the config file; an absent default file is an empty config.

    ``path`` (``--config``) or ``$XNATFS_CONFIG`` name a file that must exist.  Raises
    :class:`ConfigError` for a file that cannot be read, malformed TOML (file and line), an
    unknown table or key, a value of the wrong type, a file holding a password that group or
    others may access, and a file another user owns or group or others may write.
    """
    explicit = path is not None or bool(env.get(ENV_CONFIG))
    file = Path(
        os.path.expanduser(
            str(path if path is not None else env.get(ENV_CONFIG) or default_config_path(env))
        )
    )
    read = _read_toml(file, explicit)
    if read is None:
        return ConfigFile()
    st, text, data = read
    defaults: Dict[str, Any] = {}
    servers: Dict[str, Dict[str, Any]] = {}
    for name, value in data.items():
        if name == "defaults":
            defaults = _check_table(file, text, "defaults", value)
        elif name == "servers":
            if not isinstance(value, dict):
                raise ConfigError(
                    f'{file}: servers must be tables like [servers."https://xnat.example.org"]'
                )
            for url, table in value.items():
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise ConfigError(
                        f'{file}: [servers."{url}"] is not an http(s) URL; write '
                        f'the server as [servers."https://xnat.example.org"]'
                    )
                servers[normalize_url(url)] = _check_table(file, text, f'servers."{url}"', table)
        else:
            close = difflib.get_close_matches(name, ["defaults", "servers"], n=1)
            hint = (
                f" (did you mean [{close[0]}]?)"
                if close
                else ' (only [defaults] and [servers."URL"] exist)'
            )
            raise ConfigError(
                f"{_where(file, text, name, '')}: unknown table or key '{name}'{hint}"
            )

    holds_password = "password" in defaults or any("password" in t for t in servers.values())
    _check_trusted(file, st, holds_password)
    return ConfigFile(path=file, defaults=defaults, servers=servers)


def _check_trusted(file: Path, st: os.stat_result, holds_password: bool) -> None:
    """Refuse a config file someone else could change, or one whose password others may read.

    It chooses the server, the CA bundle TLS is checked against, the netrc and the cache
    folder: a file another user may write (or owns, and so may chmod) could point the mount
    at their own CA and catch the password at the first login.  So a regular file must be
    owned by the user (the effective uid, as the daemon's cache folder) or by root (a system
    file, ``/etc``), and not writable by others, nor by its group unless that is the owner's
    own (``_owners_own_group``); one holding a password must also not be readable by group
    or others (``chmod 600``, like a netrc).  Not a regular file
    (``XNATFS_CONFIG=/dev/null``: no config) has nothing to check.  One line names the
    file and the fix."""
    mode = stat.S_IMODE(st.st_mode)
    if holds_password and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{file} holds a password but group or others may access it "
            f"(mode {mode:04o}): run chmod 600 {file}"
        )
    if not stat.S_ISREG(st.st_mode):
        return
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise ConfigError(
            f"config file {file} is owned by uid {st.st_uid}, not by you (uid {me}) or root: "
            f"refused, its owner could change what it sets; run chown {me} {file} "
            "(or use a config file of your own)"
        )
    if mode & stat.S_IWOTH or (mode & stat.S_IWGRP and not _owners_own_group(st)):
        raise ConfigError(
            f"config file {file} may be written by group or others (mode {mode:04o}): "
            f"refused, they could change the server, CA bundle or netrc it sets; "
            f"run chmod go-w {file}"
        )


def _owners_own_group(st: os.stat_result) -> bool:
    """True when the file's group is its owner's primary group and has no other member (a
    user-private group, as ``umask 002`` distributions make): writable by that group is
    writable by the owner alone (Debian's OpenSSH accepts it the same way)."""
    import grp
    import pwd

    try:
        owner = pwd.getpwuid(st.st_uid)
        group = grp.getgrgid(st.st_gid)
    except KeyError:
        return False
    return owner.pw_gid == st.st_gid and set(group.gr_mem) <= {owner.pw_name}


def _toml_message(exc: Exception) -> str:
    """tomllib says "Invalid value (at line 3, column 9)"; put the line first."""
    text = str(exc)
    m = re.search(r"\(at line (\d+), column (\d+)\)", text)
    if m:
        reason = text[: m.start()].strip()
        return f"line {m.group(1)}, column {m.group(2)}: malformed TOML: {reason}"
    m = re.search(r"\(at end of document\)", text)
    if m:
        return f"end of file: malformed TOML: {text[: m.start()].strip()}"
    return f"malformed TOML: {text}"


# ------------------------------------------------------------------------------- precedence
def effective_settings(
    url: str,
    cli_values: Mapping[str, Any],
    env: Mapping[str, str] = os.environ,
    config: Optional[ConfigFile] = None,
) -> Dict[str, Tuple[Any, str]]:
    """Every key of :data:`KEYS` -> ``(value, source)`` for a mount of ``url``.

    ``cli_values`` holds only the options the user typed (the CLI leaves the others None),
    keyed like :data:`KEYS` (``-`` is accepted for ``_``); ``None`` values count as not given.
    Unset keys without a default come back as ``(None, "default")``.  Raises
    :class:`ConfigError` for an unknown key or a bad value from the command line or from an
    ``XNATFS_<KEY>`` variable.
    """
    config = config or ConfigFile()
    from_file = config.for_server(url)
    given: Dict[str, Any] = {}
    for key, value in cli_values.items():
        norm = key.replace("-", "_")
        if norm not in KEYS:
            raise ConfigError(f"unknown setting '{key}'")
        if value is not None:
            given[norm] = value

    out: Dict[str, Tuple[Any, str]] = {}
    for key, spec in KEYS.items():
        if key in given:
            option = "--" + key.replace("_", "-")
            out[key] = (_convert(spec, key, given[key], f"{option}"), SOURCE_CLI)
        elif env.get(ENV_PREFIX + key.upper()):
            var = ENV_PREFIX + key.upper()
            out[key] = (_convert(spec, key, env[var], f"${var}"), SOURCE_ENV)
        elif key in from_file:
            out[key] = (from_file[key], SOURCE_FILE)
        else:
            out[key] = (_default(key, env), SOURCE_DEFAULT)
    return out


def _convert(spec: KeySpec, key: str, value: Any, where: str) -> Any:
    try:
        return spec.convert(value, True)
    except ValueError as exc:
        raise ConfigError(f"{where} {exc} (got {_show(key, value)})") from None


# ------------------------------------------------------------------------------- rendering
def render(settings: Mapping[str, Tuple[Any, str]], config: Optional[ConfigFile] = None) -> str:
    """Text for ``xnatfs config``: one ``key = value  # source`` line per key, TOML-like,
    secrets masked (an unset secret shows as unset, a set one as ``********``)."""
    lines = []
    if config is not None:
        lines.append(f"# config file: {config.path if config.path else 'none'}")
    rows = []
    for key, (value, source) in settings.items():
        if value is None:
            shown = "(unset)"
        elif key in SECRET_KEYS:
            shown = f'"{MASK}"'
        elif (
            key in BY_NAME
            and BY_NAME[key].kind.label in ("size", "octal mode")
            and isinstance(value, int)
        ):
            shown = f'"{BY_NAME[key].kind.text(value)}"'
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        elif isinstance(value, str):
            shown = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
        rows.append((key, shown, source))
    key_width = max((len(r[0]) for r in rows), default=0)
    value_width = max((len(r[1]) for r in rows), default=0)
    for key, shown, source in rows:
        lines.append(f"{key.ljust(key_width)} = {shown.ljust(value_width)}  # {source}")
    return "\n".join(lines) + "\n"
