"""A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries (`initdb`, `pg_ctl`), a data folder in a
temp dir, a free local port, trust auth on 127.0.0.1 only; stopped and removed afterwards.

`initdb` refuses to run as root, so as root the server runs as the `postgres` user
(`runuser -u postgres --`) in a folder that user owns; as anyone else it runs as that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def server_binaries() -> Path:
    """$KDSUITE_PG_BIN, else the newest /usr/lib/postgresql/<version>/bin (15 on Debian 12)."""
    if os.environ.get("KDSUITE_PG_BIN"):
        return Path(os.environ["KDSUITE_PG_BIN"])
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else Path("/usr/lib/postgresql/15/bin")


PG_BIN = server_binaries()


def unavailable_reason() -> str | None:
    """Why no server can be started here, or None."""
    missing = [name for name in ("initdb", "pg_ctl") if not (PG_BIN / name).is_file()]
    if missing:
        return f"PostgreSQL binaries {missing} not in {PG_BIN} (apt-get install -y postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def postgres_server(database: str = "kdsuite") -> Iterator[str]:
    """Start a server with an empty `database`; yields its SQLAlchemy URL (psycopg 3 driver)."""
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="kdsuite-pg-"))
    data, log_file = folder / "data", folder / "server.log"
    if as_user:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    port = free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, text=True)

    started = False
    try:
        run(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log_file), "-o", options, "-w", "start")
        started = True
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
