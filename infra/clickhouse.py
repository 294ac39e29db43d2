"""The analytics store, reached only through clickhouse-connect.

``chdb://path`` runs the ClickHouse engine inside this process (one process per data
directory); ``http(s)://`` talks to a server or cluster. Everything above this module is the
same code for both.
"""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

_clients: dict[str, Client] = {}
_lock = threading.Lock()


def chdb_path(url: str) -> Path | None:
    if not url.startswith("chdb://"):
        return None
    return Path(url.removeprefix("chdb://").split("?", 1)[0]).expanduser().resolve()


def cluster_name(url: str) -> str | None:
    """The ClickHouse cluster named by ``?cluster=`` on a server URL (scale mode), else None."""
    if url.startswith("chdb://"):
        return None
    values = parse_qs(urlparse(url).query).get("cluster")
    return values[0] if values else None


def is_embedded(url: str) -> bool:
    return url.startswith("chdb://")


def connect(url: str) -> Client:
    """One client per URL per process: chdb forbids two engines on one data directory.

    chdb also runs one engine per process: opening another data directory closes the client
    of the previous one first (a process serves one directory; tests move between several).
    """
    with _lock:
        client = _clients.get(url)
        if client is None:
            if is_embedded(url):
                for other in [known for known in _clients if is_embedded(known)]:
                    _clients.pop(other).close()
            client = _open(url)
            _clients[url] = client
        return client


def disconnect(url: str | None = None) -> None:
    """Closes the client of ``url`` (every client when None); the next connect reopens it."""
    with _lock:
        for known in [known for known in _clients if url is None or known == url]:
            _clients.pop(known).close()


def _open(url: str) -> Client:
    path = chdb_path(url)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{path}")
    parsed = urlparse(url)
    return clickhouse_connect.get_client(
        host=parsed.hostname or "localhost",
        port=parsed.port or (8443 if parsed.scheme == "https" else 8123),
        username=parsed.username or "default",
        password=parsed.password or "",
        database=(parsed.path or "/").strip("/") or "default",
        secure=parsed.scheme == "https",
    )


def analytics_ready(url: str) -> bool:
    try:
        return str(connect(url).command("SELECT 1")) == "1"
    except Exception:
        return False
