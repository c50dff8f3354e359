"""The results store of a sweep: one SQLite file (stdlib ``sqlite3``) beside the sweep file.

One row per trial, keyed by the content hash of its full configuration: the configuration
(JSON), status (``pending`` → ``running`` → ``done`` or ``failed``), attempts, timings,
metrics, artefact paths, provenance and the error of a failed attempt. Every change is one
transaction (SQLite's journal makes it atomic and durable), so a crash at any moment leaves
the store as it was before or after that change, never between: a ``done`` row is complete,
and a trial whose hash is ``done`` is never run again. Rows left ``running`` by a killed
driver are run again on ``--resume``.

``meta`` holds the schema version; a store written by a newer lowbit (a higher version) is
refused before anything is read or written.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit import __version__
from lowbit.errors import ArtefactError

SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    seconds REAL,
    metrics TEXT,
    artefacts TEXT,
    provenance TEXT,
    error TEXT
);
"""


def config_hash(config: Mapping[str, Any]) -> str:
    """The content hash of a trial's configuration: SHA-256 of its canonical JSON (sorted
    keys, no spaces), first 16 hex digits."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Trial:
    """One row of the store (JSON columns decoded)."""

    hash: str
    name: str
    config: dict[str, Any]
    status: str
    attempts: int
    created: float
    started: float | None
    finished: float | None
    seconds: float | None
    metrics: dict[str, Any] | None
    artefacts: dict[str, Any] | None
    provenance: dict[str, Any] | None
    error: str | None

    def flat(self) -> dict[str, Any]:
        """The row as one flat record (configuration and metrics as columns) for tables."""
        out: dict[str, Any] = {"hash": self.hash, "name": self.name, "status": self.status}
        out.update({f"config.{k}": _scalar(v) for k, v in self.config.items()})
        out.update({k: _scalar(v) for k, v in (self.metrics or {}).items()})
        out.update(attempts=self.attempts, seconds=self.seconds, error=self.error)
        return out


def _scalar(v: Any) -> Any:
    return v if v is None or isinstance(v, str | int | float | bool) else json.dumps(v)


class Store:
    """A sweep's results in one SQLite file; open with :func:`open_store`."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it is committed, or none of it (on any error)."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            yield self._conn

    def add(self, name: str, config: Mapping[str, Any]) -> str:
        """Register a trial as ``pending`` unless its hash is already in the store; its hash."""
        digest = config_hash(config)
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO trials (hash, name, config, status, created) "
                "VALUES (?, ?, ?, 'pending', ?)",
                (digest, name, json.dumps(dict(config), sort_keys=True), time.time()),
            )
        return digest

    def start(self, digest: str) -> None:
        """Mark a trial ``running`` (one more attempt); a ``done`` trial is refused."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE trials SET status='running', attempts=attempts+1, started=?, "
                "error=NULL WHERE hash=? AND status!='done'",
                (time.time(), digest),
            )
            if cur.rowcount != 1:
                raise ArtefactError(f"{self.path}: trial {digest} is done or unknown; not rerun")

    def finish(
        self,
        digest: str,
        metrics: Mapping[str, Any],
        artefacts: Mapping[str, Any],
        provenance: Mapping[str, Any],
        seconds: float,
    ) -> None:
        """Record a trial's results and mark it ``done``, in one transaction."""
        with self._tx() as db:
            db.execute(
                "UPDATE trials SET status='done', finished=?, seconds=?, metrics=?, "
                "artefacts=?, provenance=?, error=NULL WHERE hash=?",
                (time.time(), seconds, _dump(metrics), _dump(artefacts), _dump(provenance),
                 digest),
            )  # fmt: skip

    def fail(self, digest: str, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE trials SET status='failed', finished=?, error=? WHERE hash=?",
                (time.time(), error, digest),
            )

    def trials(self, status: str | None = None) -> list[Trial]:
        """Every trial (or those with ``status``) in the order they were added."""
        query = "SELECT * FROM trials" + (" WHERE status=?" if status else "")
        rows = self._conn.execute(query + " ORDER BY created, hash", (status,) if status else ())
        return [_trial(r) for r in rows]

    def todo(self, digests: list[str]) -> list[str]:
        """Those of ``digests`` that are not done (pending, failed, or left running)."""
        done = {t.hash for t in self.trials("done")}
        return [d for d in digests if d not in done]


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True, default=str)


def _trial(row: sqlite3.Row) -> Trial:
    def load(key: str) -> Any:
        return None if row[key] is None else json.loads(row[key])

    return Trial(
        row["hash"], row["name"], json.loads(row["config"]), row["status"], row["attempts"],
        row["created"], row["started"], row["finished"], row["seconds"], load("metrics"),
        load("artefacts"), load("provenance"), row["error"],
    )  # fmt: skip


def open_store(path: Path, *, create: bool = True) -> Store:
    """Open (or, with ``create``, create) the store at ``path``; refuse a store of a newer
    schema or a file that is not a lowbit store."""
    path = Path(path)
    if not path.exists() and not create:
        raise ArtefactError(f"results store {path} does not exist; run `lowbit sweep` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        _check_schema(path, conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ArtefactError(f"{path} is not a lowbit results store (SQLite: {exc})") from None
    except ArtefactError:
        conn.close()
        raise
    return Store(path, conn)


def _check_schema(path: Path, conn: sqlite3.Connection) -> None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables and "meta" not in tables:
        raise ArtefactError(f"{path} is an SQLite file but not a lowbit results store")
    if "meta" in tables:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise ArtefactError(
                f"{path} was written by a newer lowbit (store schema {version}; this lowbit "
                f"reads up to {SCHEMA_VERSION}); upgrade lowbit to read it"
            )
        if version == SCHEMA_VERSION:
            return
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_by', ?)",
            (f"lowbit {__version__}",),
        )
