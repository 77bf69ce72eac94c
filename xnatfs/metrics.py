"""``MNT/.xnatfs/stats`` as Prometheus text (``MNT/.xnatfs/metrics``).

A pure function of the stats dict that ``Runtime.stats()`` builds, so both files always agree and
this module needs no imports from the rest of xnatfs.  Format: Prometheus text exposition 0.0.4.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

Labels = Tuple[Tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    """A sample value in full: ``%g`` kept 6 digits, so a byte counter of 8,388,608 read
    8.38861e+06 (and stood still between scrapes until it grew by 10)."""
    number = float(value)
    if number.is_integer() and abs(number) < 2**63:
        return str(int(number))
    return repr(number)


class _Writer:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def metric(
        self, name: str, kind: str, text: str, samples: Iterable[Tuple[Labels, Optional[float]]]
    ) -> None:
        rows = [(labels, value) for labels, value in samples if value is not None]
        self.lines.append(f"# HELP xnatfs_{name} {text}")
        self.lines.append(f"# TYPE xnatfs_{name} {kind}")
        for labels, value in rows:
            label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels)
            label_text = "{" + label_text + "}" if label_text else ""
            self.lines.append(f"xnatfs_{name}{label_text} {_number(value)}")


def prometheus(stats: Mapping[str, Any]) -> str:
    w = _Writer()
    _client_metrics(w, stats)
    _server_metrics(w, stats)
    _cache_metrics(w, stats)
    uploads = stats.get("uploads") or []
    states: Dict[str, int] = {}
    for item in uploads:
        states[item.get("state", "?")] = states.get(item.get("state", "?"), 0) + 1
    w.metric(
        "uploads",
        "gauge",
        "uploads not yet confirmed by XNAT, by state",
        [
            ((("state", st),), states.get(st, 0))
            for st in sorted(set(states) | {"pending", "failed"})
        ],
    )
    w.metric(
        "errors_total",
        "counter",
        "failed filesystem calls by errno",
        [((("errno", k),), n) for k, n in sorted((stats.get("errors") or {}).items())],
    )
    writes = stats.get("fuse_writes") or {}
    w.metric(
        "fuse_write_requests_total",
        "counter",
        "FUSE write requests served (the kernel's pieces of what programs wrote)",
        [((), writes.get("requests"))],
    )
    w.metric(
        "fuse_write_bytes_total",
        "counter",
        "bytes those write requests carried",
        [((), writes.get("bytes"))],
    )
    w.metric(
        "fuse_requests_total",
        "counter",
        "FUSE requests served by kind (getattr: the kernel's LOOKUP or GETATTR; readdir: one "
        "chunk of a listing)",
        [((("op", k),), n) for k, n in sorted((stats.get("fuse_calls") or {}).items())],
    )
    w.metric(
        "uptime_seconds", "gauge", "seconds since the mount started", [((), stats.get("uptime_s"))]
    )
    return "\n".join(w.lines) + "\n"


def _client_metrics(w: _Writer, stats: Mapping[str, Any]) -> None:
    """The HTTP client's counters and its request limiter's state."""
    requests: Mapping[str, Any] = stats.get("requests") or {}
    by_status: Dict[str, int] = requests.get("requests") or {}
    w.metric(
        "requests_total",
        "counter",
        "HTTP requests to XNAT by method and status",
        [
            ((("method", key.split(" ", 1)[0]), ("status", key.split(" ", 1)[-1])), n)
            for key, n in sorted(by_status.items())
        ],
    )
    w.metric(
        "request_failures_total",
        "counter",
        "HTTP requests that got no answer, by kind",
        [((("kind", k),), n) for k, n in sorted((requests.get("errors") or {}).items())],
    )
    w.metric(
        "received_bytes_total",
        "counter",
        "bytes received from XNAT",
        [((), requests.get("bytes_in"))],
    )
    w.metric("sent_bytes_total", "counter", "bytes sent to XNAT", [((), requests.get("bytes_out"))])
    w.metric(
        "request_retries_total", "counter", "GET/HEAD retries", [((), requests.get("retries"))]
    )
    w.metric("logins_total", "counter", "JSESSION logins", [((), requests.get("logins"))])
    limiter: Mapping[str, Any] = stats.get("limiter") or {}
    w.metric(
        "request_limit",
        "gauge",
        "requests allowed in flight now (adaptive, <= --max-requests)",
        [((), limiter.get("limit"))],
    )
    w.metric("requests_in_flight", "gauge", "requests in flight", [((), limiter.get("in_flight"))])
    w.metric(
        "request_limit_decreases_total",
        "counter",
        "halvings of the limit (429/503/timeouts)",
        [((), limiter.get("decreases"))],
    )
    w.metric(
        "request_pauses_total",
        "counter",
        "mount-wide pauses (server down, Retry-After)",
        [((), limiter.get("pauses"))],
    )
    w.metric(
        "request_latency_seconds",
        "summary",
        "latency of recent requests",
        [
            ((("quantile", q),), requests.get(f"latency_p{p}"))
            for q, p in (("0.5", "50"), ("0.9", "90"), ("0.99", "99"))
        ],
    )


def _server_metrics(w: _Writer, stats: Mapping[str, Any]) -> None:
    """The circuit breaker (``xnat/breaker.py``): is XNAT up, and what failed at once."""
    server: Mapping[str, Any] = stats.get("server") or {}
    state = server.get("state")
    w.metric(
        "server_up",
        "gauge",
        "1 while XNAT answers, 0 while it is known to be down (calls fail at once)",
        [((), None if state is None else (1 if state == "up" else 0))],
    )
    w.metric(
        "server_down_total",
        "counter",
        "times XNAT was found down",
        [((), server.get("times_down"))],
    )
    w.metric(
        "server_calls_failed_fast_total",
        "counter",
        "calls failed at once, without a request, while XNAT was down",
        [((), server.get("calls_failed_fast"))],
    )


def _cache_metrics(w: _Writer, stats: Mapping[str, Any]) -> None:
    """The listing cache's and the content cache's counters."""
    listing: Mapping[str, Any] = stats.get("listing_cache") or {}
    w.metric(
        "listing_cache_hits_total",
        "counter",
        "listings answered from memory",
        [((), listing.get("hits"))],
    )
    w.metric(
        "listing_cache_misses_total",
        "counter",
        "listings that needed XNAT",
        [((), listing.get("misses"))],
    )
    content: Mapping[str, Any] = stats.get("content_cache") or {}
    w.metric(
        "content_cache_hits_total",
        "counter",
        "file opens served from the disk cache",
        [((), content.get("hits"))],
    )
    w.metric(
        "content_cache_misses_total",
        "counter",
        "file opens that needed a download",
        [((), content.get("misses"))],
    )
    w.metric(
        "content_cache_bytes",
        "gauge",
        "bytes on disk in the content cache",
        [((), content.get("size_on_disk"))],
    )
    w.metric(
        "content_cache_files", "gauge", "files in the content cache", [((), content.get("entries"))]
    )
    w.metric(
        "downloads_in_flight",
        "gauge",
        "downloads running now",
        [((), content.get("downloads_in_flight"))],
    )
    w.metric(
        "downloaded_bytes_total",
        "counter",
        "bytes downloaded into the cache",
        [((), content.get("bytes_downloaded"))],
    )
