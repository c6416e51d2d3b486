# This file is part of meas_extensions_deepdisc.
#
# Developed for the LSST Data Management System.
# This product includes software developed by the LSST Project
# (https://www.lsst.org).
# See the COPYRIGHT file at the top-level directory of this distribution
# for details of code ownership.
#
# This program is free software: you can redistribute it and/or modify
# it under the terms of the GNU General Public License as published by
# the Free Software Foundation, either version 3 of the License, or
# (at your option) any later version.
#
# This program is distributed in the hope that it will be useful,
# but WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
# GNU General Public License for more details.
#
# You should have received a copy of the GNU General Public License
# along with this program.  If not, see <https://www.gnu.org/licenses/>.

"""A throwaway PostgreSQL server for tests: private cluster, loopback only, gone at teardown.

Use with ``from postgres_fixtures import postgres_server`` in a test module (pytest then sees the fixture).
``postgres_server`` (session scope) runs ``initdb`` into a fresh directory under the system temporary
directory, starts ``postgres`` listening on 127.0.0.1 only (a free port, no Unix socket) with password
authentication, and stops it and removes the directory at teardown.  PostgreSQL refuses to run as root, so
under root (as in CI) the cluster belongs to the ``postgres`` account that Debian's package creates.

`PostgresServer.create_database` makes a database with the ``btree_gist`` extension that the Butler's
PostgreSQL registry requires, and `PostgresServer.write_db_auth` writes the credentials file that
`lsst.utils.db_auth.DbAuth` reads (``LSST_DB_AUTH``), so that repository configs hold no password.

The fixture skips the test, with the reason, when the PostgreSQL server binaries or ``psycopg`` are
missing (``bin/install-postgres.sh`` installs the former, ``psycopg[binary]`` the latter).  The binaries are
looked up in ``$DEEPDISC_POSTGRES_BIN``, then next to ``pg_ctl`` on ``PATH``, then in Debian's
``/usr/lib/postgresql/<version>/bin`` (newest first).
"""

from __future__ import annotations

__all__ = [
    "PostgresServer",
    "PostgresUnavailableError",
    "find_postgres_bin_dir",
    "postgres_server",
    "start_postgres_server",
]

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

LOOPBACK = "127.0.0.1"
SUPERUSER = "deepdisc"
_SERVER_PROGRAMS = ("initdb", "postgres")
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresUnavailableError(RuntimeError):
    """PostgreSQL cannot be run here (missing binaries, driver or account); the message says why."""


def find_postgres_bin_dir() -> Path | None:
    """Directory holding the PostgreSQL server programs (``initdb``, ``postgres``), or `None`.

    Looks in ``$DEEPDISC_POSTGRES_BIN``, then in the directory of ``pg_ctl``/``initdb`` found on ``PATH``
    (following symbolic links), then in Debian's ``/usr/lib/postgresql/<version>/bin``, newest version first.
    """
    candidates: list[Path] = []
    if override := os.environ.get("DEEPDISC_POSTGRES_BIN"):
        candidates.append(Path(override))
    for program in ("pg_ctl", "initdb"):
        if found := shutil.which(program):
            candidates.append(Path(found).resolve().parent)
    if _DEBIAN_ROOT.is_dir():
        versions = [p for p in _DEBIAN_ROOT.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: int(p.name), reverse=True)]
    for directory in candidates:
        if all(os.access(directory / program, os.X_OK) for program in _SERVER_PROGRAMS):
            return directory
    return None


def _free_loopback_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the server may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _server_account() -> pwd.struct_passwd:
    """The account that owns and runs the cluster: the current user, or ``postgres`` under root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailableError(
            "running as root and there is no 'postgres' account to run the server as "
            "(PostgreSQL refuses root; bin/install-postgres.sh creates it)"
        ) from None


@dataclass
class PostgresServer:
    """A running private PostgreSQL server (see `start_postgres_server`).

    Attributes
    ----------
    bin_dir : `pathlib.Path`
        Directory of the server programs used.
    base_dir : `pathlib.Path`
        Temporary directory holding the cluster (``data/``), the server log and the credentials file.
    port : `int`
        TCP port on 127.0.0.1.
    password : `str`
        Password of the superuser `SUPERUSER` (random, per server).
    account : `str`
        Operating-system account running the server.
    process : `subprocess.Popen`
        The ``postgres`` process.
    """

    bin_dir: Path
    base_dir: Path
    port: int
    password: str
    account: str
    process: subprocess.Popen[bytes]
    host: str = LOOPBACK
    user: str = SUPERUSER

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        """The server's log file (stdout and stderr of ``postgres``)."""
        return self.base_dir / "postgres.log"

    def url(self, database: str = "postgres", *, with_password: bool = False) -> str:
        """SQLAlchemy/Butler URL of a database; without the password unless asked (see `write_db_auth`)."""
        credentials = f"{self.user}:{self.password}" if with_password else self.user
        return f"postgresql://{credentials}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:
        """An autocommit ``psycopg`` (version 3, SQLAlchemy's default driver) connection, as the superuser."""
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            connect_timeout=5,
            autocommit=True,
        )

    def query(self, sql: str, database: str = "postgres", params: Sequence[Any] = ()) -> list[tuple]:
        """Run one statement and return all its rows (empty for statements without rows)."""
        with contextlib.closing(self.connect(database)) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []

    def create_database(self, name: str, extensions: Sequence[str] = ("btree_gist",)) -> str:
        """Create a database with the given extensions and return its URL (no password in it).

        ``btree_gist`` is what the Butler's PostgreSQL registry checks for at connection time; it ships in
        Debian's ``postgresql-contrib`` (part of the ``postgresql`` package since version 10).
        """
        if not _IDENTIFIER.match(name):
            raise ValueError(f"database name {name!r} must be a lower-case SQL identifier")
        self.query(f'CREATE DATABASE "{name}"')
        for extension in extensions:
            if not _IDENTIFIER.match(extension):
                raise ValueError(f"extension name {extension!r} is not a plain SQL identifier")
            self.query(f'CREATE EXTENSION IF NOT EXISTS "{extension}"', database=name)
        return self.url(name)

    def write_db_auth(self, path: Path | None = None) -> Path:
        """Write a ``DbAuth`` credentials file (mode 600) for this server and return its path.

        Point ``LSST_DB_AUTH`` at it: the Butler then finds the password for URLs from `url`.
        """
        path = path or self.base_dir / "db-auth.yaml"
        entry = {"url": f"postgresql://{self.host}:{self.port}/*", "username": self.user}
        entry["password"] = self.password
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            yaml.safe_dump([entry], stream)
        return path

    def is_running(self) -> bool:
        """Whether the ``postgres`` process is still alive."""
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (fast shutdown, then kill after ``timeout`` s) and remove `base_dir`."""
        try:
            if self.is_running():
                # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients instead of waiting for them.
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=timeout)
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, characters: int = 3000) -> str:
        """The end of the server log (for error messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return "(no server log)"


def _cluster_parent(account: pwd.struct_passwd) -> str:
    """Where to make the cluster directory: the temporary directory, if the server's account can reach it."""
    parent = Path(tempfile.gettempdir()).resolve()
    if account.pw_uid == os.geteuid():
        return str(parent)
    # Another account must be able to traverse every ancestor (root's TMPDIR may be private).
    reachable = all(p.stat().st_mode & 0o001 for p in [parent, *parent.parents])
    return str(parent) if reachable else "/tmp"


def _run_as(account: pwd.struct_passwd, command: list[str], cwd: Path, timeout: float) -> None:
    as_other = account.pw_uid != os.geteuid()
    result = subprocess.run(
        command,
        cwd=cwd,
        env=_server_environment(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **(_identity(account) if as_other else {}),
    )
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr[-2000:]}")


def _identity(account: pwd.struct_passwd) -> dict[str, Any]:
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _server_environment(home: Path) -> dict[str, str]:
    # A clean environment: the server must not inherit PG* variables or root's HOME.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C"}


def start_postgres_server(start_timeout: float = 60.0, attempts: int = 3) -> PostgresServer:
    """Create a private cluster in a new temporary directory and start a server on a free loopback port.

    Parameters
    ----------
    start_timeout : `float`
        Seconds to wait for each start attempt to accept connections.
    attempts : `int`
        Start attempts, each on a newly chosen port (another process may take a free port first).

    Returns
    -------
    server : `PostgresServer`
        The running server; call `PostgresServer.stop` when done.

    Raises
    ------
    PostgresUnavailableError
        If the server programs, the ``psycopg`` driver or a non-root account are missing.
    RuntimeError
        If ``initdb`` fails or the server does not accept connections in time.
    """
    bin_dir = find_postgres_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailableError(
            "PostgreSQL server programs (initdb, postgres) not found in $DEEPDISC_POSTGRES_BIN, on PATH or "
            f"under {_DEBIAN_ROOT}; run bin/install-postgres.sh"
        )
    try:
        import psycopg
    except ImportError:
        raise PostgresUnavailableError(
            "the psycopg driver is not installed (pip install 'lsst-daf-butler[postgres]' 'psycopg[binary]')"
        ) from None
    account = _server_account()
    base_dir = Path(tempfile.mkdtemp(prefix="deepdisc-pg-", dir=_cluster_parent(account)))
    try:
        if account.pw_uid != os.geteuid():
            os.chown(base_dir, account.pw_uid, account.pw_gid)
        password = secrets.token_hex(16)
        password_file = base_dir / "superuser-password"
        password_file.write_text(password + "\n")
        if account.pw_uid != os.geteuid():
            os.chown(password_file, account.pw_uid, account.pw_gid)
        password_file.chmod(0o600)
        _run_as(
            account,
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(base_dir / "data"),
                "--username",
                SUPERUSER,
                "--pwfile",
                str(password_file),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            cwd=base_dir,
            timeout=start_timeout,
        )
        password_file.unlink()
        failures = []
        for _ in range(max(1, attempts)):
            server = _start_once(bin_dir, base_dir, account, password, start_timeout, psycopg)
            if server.is_running():
                return server
            failures.append(server.log_tail(800))
        raise RuntimeError(f"PostgreSQL did not start in {attempts} attempts:\n" + "\n---\n".join(failures))
    except BaseException:
        shutil.rmtree(base_dir, ignore_errors=True)
        raise


def _start_once(
    bin_dir: Path,
    base_dir: Path,
    account: pwd.struct_passwd,
    password: str,
    start_timeout: float,
    psycopg: Any,
) -> PostgresServer:
    """Start ``postgres`` on a fresh port; a server that exited (port taken) is returned stopped."""
    port = _free_loopback_port()
    settings = {
        "listen_addresses": LOOPBACK,
        "port": str(port),
        # No Unix socket: the server is reachable on loopback TCP only.
        "unix_socket_directories": "",
        # A throwaway cluster: durability is not worth the disk syncs.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "60",
    }
    command = [str(bin_dir / "postgres"), "-D", str(base_dir / "data")]
    for key, value in settings.items():
        command += ["-c", f"{key}={value}"]
    # Closed right after Popen: the server keeps its own copy of the descriptor.
    log = open(base_dir / "postgres.log", "ab")
    try:
        process = subprocess.Popen(
            command,
            cwd=base_dir,
            env=_server_environment(base_dir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            **(_identity(account) if account.pw_uid != os.geteuid() else {}),
        )
    finally:
        log.close()
    server = PostgresServer(
        bin_dir=bin_dir,
        base_dir=base_dir,
        port=port,
        password=password,
        account=account.pw_name,
        process=process,
    )
    deadline = time.monotonic() + start_timeout
    while True:
        if not server.is_running():
            return server
        try:
            server.connect().close()
            return server
        except psycopg.OperationalError as err:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError(
                    f"PostgreSQL did not accept connections within {start_timeout:.0f} s ({err}); "
                    f"server log:\n{server.log_tail()}"
                ) from err
        time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the session; the test is skipped (with why) where it cannot run."""
    try:
        server = start_postgres_server()
    except PostgresUnavailableError as err:
        pytest.skip(f"PostgreSQL unavailable: {err}")
    try:
        yield server
    finally:
        server.stop()
