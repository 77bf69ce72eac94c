"""The one table of settings: each has one name, one type, one default and one help text.

Everything that names a setting is generated from :data:`SETTINGS` (issue 14 item 4):

- the options of ``xnatfs mount`` / ``xnatfs config`` (:func:`add_arguments`; ``--NAME`` with
  ``-`` for ``_``, the default shown once, from the table),
- the config file keys and ``XNATFS_<NAME>`` variables (``config.KEYS``),
- the :class:`xnatfs.options.Options` record's defaults (its fields are checked against the
  table by ``tests/unit/test_settings_table.py``),
- ``cli.options_from_settings`` (:func:`option_values`), the daemon's argv
  (:func:`daemon_args`) and the ``mount.xnatfs -o NAME=VALUE`` options (:func:`helper_args`).

A setting's user-visible name (flag, config key, ``-o`` option) is :attr:`Setting.name`; the
``Options`` field it fills is :attr:`Setting.attr` (the same unless an older internal name
stays: ``timeout`` fills ``fs_timeout``, ``ca_bundle`` fills ``verify``).

Imports nothing from xnatfs: ``options`` and ``config`` import it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

LOG_LEVELS = ("debug", "info", "warning", "error")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/xnatfs`` (``~/.cache/xnatfs``); created 0700 by the caches."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xnatfs"


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"10G"`` / ``"512MiB"`` / ``"1000000"`` -> bytes (binary multiples)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 20G)")
    number, unit = float(m.group(1)), m.group(2).lower()
    power = " kmgtp".index(unit) if unit else 0
    return int(number * (1024**power))


def format_size(size: int) -> str:
    """Bytes -> the shortest exact ``"10G"`` form (``parse_size`` reads it back)."""
    for power, unit in ((4, "T"), (3, "G"), (2, "M"), (1, "K")):
        if size % (1024**power) == 0:
            return f"{size // 1024**power}{unit}"
    return str(size)


# ------------------------------------------------------------------------------- converters
# Each converter takes a TOML value (already typed) or a string (environment, command line,
# ``from_text=True``) and returns the normalized value or raises ValueError with the reason.
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
Convert = Callable[[Any, bool], Any]


def _to_bool(value: Any, from_text: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_text and isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError("must be true or false")


def _to_int(minimum: int) -> Convert:
    def convert(value: Any, from_text: bool) -> int:
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        if isinstance(value, str) and from_text:
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError("must be an integer") from None
        if not isinstance(value, int):
            raise ValueError("must be an integer")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return convert


def _to_float(minimum: float, strict: bool) -> Convert:
    def convert(value: Any, from_text: bool) -> float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, str) and from_text:
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError("must be a number") from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError("must be a number")
        if value < minimum or (strict and value == minimum):
            raise ValueError(f"must be {'greater than' if strict else 'at least'} {minimum:g}")
        return float(value)

    return convert


_SIZE_HINT = 'must be a size such as "20G" or a number of bytes'


def _to_size(value: Any, from_text: bool) -> int:
    if isinstance(value, bool):
        raise ValueError(_SIZE_HINT)
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be positive")
        return value
    if isinstance(value, str):
        try:
            size = parse_size(value)
        except ValueError:
            raise ValueError(_SIZE_HINT) from None
        if size <= 0:
            raise ValueError("must be positive")
        return size
    raise ValueError(_SIZE_HINT)


def _to_mode(value: Any, from_text: bool) -> int:
    """Permission bits, octal as in chmod: ``"0750"``/``"750"`` (TOML: the string, or 0o750)."""
    if isinstance(value, bool):
        raise ValueError('must be octal permission bits such as "0755"')
    if isinstance(value, str):
        try:
            value = int(value.strip(), 8)
        except ValueError:
            raise ValueError('must be octal permission bits such as "0755"') from None
    if not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ValueError("must be octal permission bits between 0000 and 0777")
    return value


def _to_str(value: Any, from_text: bool) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not value:
        raise ValueError("must not be empty")
    return value


def _to_path(value: Any, from_text: bool) -> str:
    if isinstance(value, Path):
        value = str(value)
    return os.path.expanduser(_to_str(value, from_text))


def _to_log_level(value: Any, from_text: bool) -> str:
    text = _to_str(value, from_text).lower()
    if text not in LOG_LEVELS:
        raise ValueError("must be one of " + ", ".join(LOG_LEVELS))
    return text


# ------------------------------------------------------------------------------- kinds
def _number_text(value: Any) -> str:
    """``60.0`` -> ``"60"``; exact (``repr``) when ``:g`` would round."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


@dataclass(frozen=True)
class Kind:
    """A setting's type: how text becomes a value and a value becomes text again."""

    #: normalizes a value or raises ValueError with the reason
    convert: Convert
    #: what a human reads in ``xnatfs config`` ("seconds", "size", ...)
    label: str
    #: the argv/help form of a value (``convert(text(v), True) == v``)
    text: Callable[[Any], str] = _number_text
    #: argparse metavar
    metavar: Optional[str] = None
    #: argparse ``type`` (the command line has always given ints and floats as such)
    argtype: Optional[Callable[[str], Any]] = None


BOOL = Kind(_to_bool, "boolean", lambda v: "true" if v else "false")
SIZE = Kind(_to_size, "size", format_size, "SIZE")
MODE = Kind(_to_mode, "octal mode", lambda v: f"{v:04o}", "MODE")
STRING = Kind(_to_str, "string", str)
PATH = Kind(_to_path, "path", str, "FILE")
LOG_LEVEL = Kind(_to_log_level, "string", str)


def count(minimum: int) -> Kind:
    return Kind(_to_int(minimum), "integer", metavar="N", argtype=int)


def seconds(minimum: float = 0.0, strict: bool = True) -> Kind:
    return Kind(_to_float(minimum, strict), "seconds", metavar="S", argtype=float)


# ------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Setting:
    """One setting.  ``help`` may hold ``{default}``: the default, rendered once, from here.

    Where it applies: ``cli`` -- a long option of ``xnatfs mount``/``config`` and so a
    ``mount.xnatfs -o NAME=`` option; ``config`` -- a config file key and ``XNATFS_<NAME>``;
    ``field`` -- the ``Options`` field the daemon runs with (and so part of the daemon's argv).
    ``log_level`` and ``config`` reach the daemon's argv by hand (``daemon_args``).
    """

    #: config key, ``XNATFS_<NAME>``, ``mount.xnatfs -o NAME=``; the flag is ``--name-with-dashes``
    name: str
    kind: Kind
    #: built-in default (None: unset)
    default: Any
    help: str
    #: the ``Options`` field it fills; None: same as ``name``; "": none (not a daemon setting)
    attr: Optional[str] = None
    #: a long option of ``xnatfs mount``/``xnatfs config`` (False: config file/environment only)
    cli: bool = True
    #: a config file key and an ``XNATFS_<NAME>`` variable
    config: bool = True
    #: how the default reads in help when it is not a plain value (a path that depends on $HOME)
    default_text: Optional[str] = None
    #: argparse metavar, when the kind's is not the word for it
    metavar: Optional[str] = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def field(self) -> Optional[str]:
        return self.name if self.attr is None else (self.attr or None)

    def shown_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        return self.kind.text(self.default)

    def help_text(self) -> str:
        return self.help.format(default=self.shown_default())


def _s(name: str, kind: Kind, default: Any, help: str, **kw: Any) -> Setting:
    return Setting(name, kind, default, help, **kw)


#: every setting, in the order ``xnatfs config`` shows them
SETTINGS: Tuple[Setting, ...] = (
    _s(
        "cache_dir",
        PATH,
        None,
        "on-disk cache (default: {default}, mode 0700)",
        default_text="$XDG_CACHE_HOME/xnatfs",
        metavar="DIR",
    ),
    _s("cache_size", SIZE, 10 * 1024**3, "content cache limit (default {default})"),
    _s(
        "listing_ttl", seconds(0.0, False), 60.0, "seconds a listing is trusted (default {default})"
    ),
    _s("max_threads", count(1), 16, "FUSE worker threads = HTTP pool size (default {default})"),
    _s("max_downloads", count(1), 8, "parallel file downloads into the cache (default {default})"),
    _s(
        "prefetch",
        count(0),
        16,
        "files of a folder downloaded ahead of the one opened (default {default}, 0 off)",
    ),
    _s(
        "walk_ahead",
        count(0),
        4,
        "listings loaded in parallel ahead of find/cp -r/du (default {default}, 0 off)",
    ),
    _s(
        "bulk_zip",
        count(0),
        32,
        "fetch a resource with at least N uncached files as one zip when one of them is opened "
        "(default {default}, 0 off)",
    ),
    _s(
        "max_requests",
        count(1),
        16,
        "HTTP requests in flight at most, every activity together; backs off by itself on "
        "429/503/timeouts (default {default})",
    ),
    _s(
        "read_ahead_kb",
        count(0),
        1024,
        "kernel read-ahead of the mount (default {default}: 1 MiB reads; 0 keeps the kernel's)",
    ),
    _s(
        "timeout",
        seconds(),
        60.0,
        "longest wait of any file operation in seconds (default {default})",
        attr="fs_timeout",
    ),
    _s("connect_timeout", seconds(), 5.0, "HTTP connect timeout in seconds (default {default})"),
    _s(
        "read_timeout",
        seconds(),
        30.0,
        "longest silence of an HTTP answer in seconds, and how long the download of a file "
        "larger than the cache waits for a reader that stopped (default {default})",
    ),
    _s(
        "retries",
        count(0),
        3,
        "retries of a read after a dropped connection or a 429/5xx (default {default})",
    ),
    _s(
        "netrc",
        PATH,
        None,
        "netrc file (default {default})",
        attr="",
        default_text="$NETRC or ~/.netrc",
    ),
    _s("ca_bundle", PATH, None, "CA bundle for TLS verification", attr="verify"),
    _s("log_level", LOG_LEVEL, "info", "daemon log level (default {default})", attr=""),
    _s("allow_delete", BOOL, False, "allow rm, rmdir, overwriting files and prearchive deletes"),
    _s(
        "catalog_times",
        BOOL,
        False,
        "show files' times from XNAT's resource catalogs (one more request per resource listing)",
    ),
    _s(
        "per_directory_listings",
        BOOL,
        False,
        "list every directory with its own request (off: an experiment's scan resources and "
        "files come from one or two requests)",
    ),
    _s(
        "names_only_listings",
        BOOL,
        False,
        "answer directory listings with names only (off: each entry's size, type and times come "
        "with the listing and the kernel needs no lookup per name)",
    ),
    _s(
        "allow_other_write",
        BOOL,
        False,
        "with -o allow_other: let other local users write too (as you, on XNAT); without it "
        "they can only read (see -o umask=)",
    ),
    _s("read_only", BOOL, False, "refuse every write (EROFS)"),
    _s(
        "zero_message_opens",
        BOOL,
        False,
        "with --read-only: the kernel opens files without asking the daemon and keeps their "
        "pages across opens (fastest warm reads of many small files; generated files are sized "
        "at lookup)",
    ),
    _s(
        "dir_mode",
        MODE,
        None,
        "permission bits shown for directories (default {default}; group/other never get write "
        "bits unless --allow-other-write)",
        default_text="0755",
    ),
    _s(
        "file_mode",
        MODE,
        None,
        "permission bits shown for files (default {default}; the same rule)",
        default_text="0644",
    ),
    _s(
        "nonempty",
        BOOL,
        False,
        "mount even if the mount point holds files (they stay hidden while mounted); also "
        "-o nonempty",
    ),
    _s(
        "experiment_type",
        STRING,
        "xnat:mrSessionData",
        "xsiType of experiments made with mkdir (default {default})",
        metavar="XSITYPE",
    ),
    _s(
        "scan_type",
        STRING,
        "xnat:mrScanData",
        "xsiType of scans made with mkdir (default {default})",
        metavar="XSITYPE",
    ),
    _s(
        "upload_workers", count(1), 2, "files uploaded to XNAT at the same time (default {default})"
    ),
    _s(
        "upload_backoff",
        seconds(),
        1.0,
        "first wait before an upload is retried, doubled per failure (default {default} s)",
    ),
    _s(
        "upload_backoff_max",
        seconds(),
        300.0,
        "longest wait between upload retries in seconds (default {default})",
    ),
    _s(
        "bids_config",
        PATH,
        None,
        "dcm2bids configuration file for the BIDS view MNT/.bids (docs/BIDS.md)",
    ),
    _s(
        "bids_conversions",
        count(1),
        2,
        "dcm2niix conversions of the BIDS view running at once (default {default})",
    ),
    _s(
        "bids_conversion_timeout",
        seconds(),
        600.0,
        "longest one dcm2niix conversion may run, in seconds (default {default})",
    ),
    _s("user", STRING, None, "XNAT user", attr="", cli=False),
    _s("password", STRING, None, "XNAT password", attr="", cli=False),
    # command line (and mount.xnatfs -o) only: where the other settings come from / go to
    _s(
        "config",
        PATH,
        None,
        "config file (default {default})",
        attr="",
        config=False,
        default_text="$XNATFS_CONFIG or ~/.config/xnatfs/config.toml",
    ),
    _s(
        "log_file",
        PATH,
        None,
        "daemon log (default: {default})",
        attr="",
        config=False,
        default_text="<cache-dir>/logs/<mountpoint>.log",
    ),
)

BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}
#: the config file keys / ``XNATFS_*`` variables
CONFIG_SETTINGS: Tuple[Setting, ...] = tuple(s for s in SETTINGS if s.config)
#: the settings that fill ``Options`` fields
OPTION_SETTINGS: Tuple[Setting, ...] = tuple(s for s in SETTINGS if s.field)
#: ``Options`` field -> built-in default (for options.py)
DEFAULTS: Dict[str, Any] = {s.field: s.default for s in OPTION_SETTINGS if s.field}


def default(attr: str) -> Any:
    """The table's default of ``Options.<attr>``."""
    return DEFAULTS[attr]


# ------------------------------------------------------------------------------- generators
def add_arguments(parser: Any) -> None:
    """Every command-line setting as a long option of ``parser`` (``xnatfs mount``/``config``).

    Defaults are None here: the effective value comes from ``xnatfs.config`` (command line >
    ``XNATFS_*`` environment > config file > the table's default)."""
    for s in SETTINGS:
        if not s.cli:
            continue
        if s.kind is BOOL:
            parser.add_argument(s.flag, action="store_true", default=None, help=s.help_text())
        elif s.kind is LOG_LEVEL:
            parser.add_argument(s.flag, default=None, choices=list(LOG_LEVELS), help=s.help_text())
        else:
            parser.add_argument(
                s.flag,
                default=None,
                metavar=s.metavar or s.kind.metavar,
                type=s.kind.argtype,
                help=s.help_text(),
            )


def option_values(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Effective values by setting name -> keyword arguments of ``Options`` (the fields the
    table fills; ``url``, ``fuse_options`` and the ``-o`` owner options come from the caller)."""
    out: Dict[str, Any] = {}
    for s in OPTION_SETTINGS:
        value = values[s.name]
        if s.name == "cache_dir":
            value = Path(value).expanduser().resolve()
        elif s.name == "ca_bundle":
            value = value or True  # no bundle: verify against the system's CAs
        out[s.field or s.name] = value
    return out


def daemon_args(options: Any, log_level: str) -> List[str]:
    """The daemon's options for ``options``: every setting explicit (the child reads no config
    file: ``--config /dev/null``), booleans as flags, unset values left out."""
    argv: List[str] = []
    for s in SETTINGS:
        if s.name == "log_level":
            argv += [s.flag, log_level]
            continue
        if s.name == "config":
            argv += [s.flag, os.devnull]
            continue
        if not s.field:
            continue
        value = getattr(options, s.field)
        if s.name == "ca_bundle":
            # from whichever source set it: the child reads no config file, and a relative
            # path must not depend on its working directory
            value = os.path.abspath(value) if isinstance(value, str) else None
        if s.kind is BOOL:
            if value:
                argv.append(s.flag)
        elif value is not None:
            argv += [s.flag, s.kind.text(value)]
    return argv


#: ``mount.xnatfs -o`` options mount(8) adds that libfuse does not take: dropped
MOUNT_ONLY_OPTIONS = frozenset(
    {"_netdev", "nofail", "noauto", "auto", "user", "nouser", "users", "defaults"}
)


def helper_args(opts: Mapping[str, object]) -> Tuple[List[str], List[str]]:
    """``mount.xnatfs -o`` options -> (xnatfs long options, libfuse options).

    Options named like a command-line setting (``cache_dir=``, ``listing_ttl=``, ``nonempty``)
    are xnatfs's; ``ro`` is ``--read-only``; mount(8)'s own (``_netdev``, ``x-*``...) are
    dropped; the rest go to libfuse."""
    own: List[str] = []
    fuse: List[str] = []
    for key, value in opts.items():
        s = BY_NAME.get(key)
        if s is not None and s.cli:
            if s.kind is not BOOL:
                own += [s.flag, str(value)]
            elif value is True or str(value).lower() in _TRUE:
                own.append(s.flag)
        elif key == "ro":
            own.append(BY_NAME["read_only"].flag)
        elif key in MOUNT_ONLY_OPTIONS or key.startswith("x-"):
            continue
        else:
            fuse.append(key if value is True else f"{key}={value}")
    return own, fuse


def parse_fuse_opts(values: Sequence[str]) -> Dict[str, object]:
    """``-o a,b=c -o d`` -> ``{"a": True, "b": "c", "d": True}``."""
    out: Dict[str, object] = {}
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            key, eq, val = item.partition("=")
            out[key] = val if eq else True
    return out
