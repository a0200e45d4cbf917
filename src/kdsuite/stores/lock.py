"""Locks that serialise work on a database shared by several processes, keyed by its URL.

`sqlite_lock(url)` is a file lock beside a SQLite file (`optuna.db` -> `optuna.db.lock`): hold it
around the first connection to a store that may not exist yet, since two processes creating the
same new SQLite store at once both run its schema migrations and one fails (`UNIQUE constraint
failed: alembic_version.version_num`). Any other URL gets no lock.

`database_lock(url, name)` serialises one named critical section across every process using the
database, wherever they run: the SQLite file lock, a session-level advisory lock on PostgreSQL
(`pg_advisory_lock`), `GET_LOCK` on MySQL. Other backends get none, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock

log = logging.getLogger(__name__)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (`sqlite:///rel.db` relative to the working directory,
    `sqlite:////abs.db` absolute, any `+driver` and `?query`); None for in-memory SQLite and for
    every other backend."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] != "sqlite":
        return None
    path = rest[1:] if rest.startswith("/") else rest  # the host part of a SQLite URL is empty
    path = path.split("?")[0]
    if path in ("", ":memory:") or path.startswith("file::memory:"):
        return None
    return Path(path)


@contextmanager
def sqlite_lock(url: str, timeout: float = 600.0) -> Iterator[None]:
    """Hold `<file>.lock` beside the SQLite file of `url` (its folder is created); no-op for
    any other URL. Waits at most `timeout` seconds, then raises `filelock.Timeout`."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=timeout):
        yield


def _lock_key(name: str) -> int:
    """A signed 64-bit key for `pg_advisory_lock`, stable across processes and machines."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def database_lock(url: str, name: str, timeout: float = 600.0) -> Iterator[None]:
    """Hold a lock called `name` in the database at `url` for the duration of the block.

    The lock lives as long as a dedicated connection (never a pooled one), so a process that dies
    releases it. SQLite uses the file lock of `sqlite_lock` (one lock per file, whatever `name`).
    """
    if url.split("://")[0].split("+")[0] == "sqlite":
        with sqlite_lock(url, timeout):
            yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    if backend not in ("postgresql", "mysql", "mariadb"):
        log.warning("no cross-process lock for a %s database; %r is not serialised", backend, name)
        yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if backend == "postgresql":
                key = _lock_key(name)
                connection.execute(sqlalchemy.text(f"SET lock_timeout = '{int(timeout * 1000)}ms'"))
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                connection.commit()
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
            else:
                lock_name = "kdsuite_" + hashlib.sha256(name.encode()).hexdigest()[:40]
                got = connection.execute(
                    sqlalchemy.text("SELECT GET_LOCK(:name, :timeout)"), {"name": lock_name, "timeout": timeout}
                ).scalar()
                if got != 1:
                    raise TimeoutError(f"could not take lock {name!r} in {backend} within {timeout} s")
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:name)"), {"name": lock_name})
    finally:
        engine.dispose()
