"""Owns a private PostgreSQL server for tests that kill the database: initdb, start, SIGKILL, restart, remove.

The shared cluster on :5432 is never stopped by the tests; scenarios that crash PostgreSQL get a server of
their own, made with the installed PostgreSQL binaries in a temporary directory, listening on a free port on
127.0.0.1 only, with trust authentication for the `postgres` role and `synchronous_commit=on` (DESIGN.md,
invariant 2). PostgreSQL refuses to run as root, so under root it runs as the `postgres` user, as
tests/harness/broker.py runs RabbitMQ as `rabbitmq`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from tests.harness.cleanups import AT_EXIT

log = logging.getLogger(__name__)

BIN = pathlib.Path("/usr/lib/postgresql/15/bin")
RUN_AS = "postgres"
SUPERUSER = "postgres"

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
KILL_TIMEOUT = 10.0
POLL_INTERVAL = 0.1
LOG_TAIL_LINES = 40
# Indexes into the fields of /proc/<pid>/stat that follow "(comm)": proc(5) fields 3 (state) and 5 (pgrp).
STAT_STATE = 0
STAT_PGRP = 2

# Small, so that several servers fit beside the shared one on a small machine; the rest are the defaults,
# spelled out where the tests depend on them.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "synchronous_commit": "on",
    "fsync": "on",
    "shared_buffers": "32MB",
    "max_connections": "50",
    # Log lines say what the server did at a restart (crash recovery, redo); they go to the log file.
    "logging_collector": "off",
    "log_min_messages": "warning",
}


class PostgresError(RuntimeError):
    """The private server could not be created, started, killed or removed."""


class PrivatePostgres:
    """One PostgreSQL server of the installed binaries, in its own directory, owned by this test session."""

    def __init__(self, tmp_root: pathlib.Path | None = None, bin_dir: pathlib.Path = BIN) -> None:
        if not (bin_dir / "postgres").is_file():
            raise PostgresError(
                f"no PostgreSQL server binaries in {bin_dir} (Debian: apt-get install -y postgresql)"
            )
        self._bin = bin_dir
        self._run_as = _unprivileged_user()
        # Not under pytest's tmp dirs: they sit below a 0700 /tmp/pytest-of-root, closed to the postgres user.
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="eventagg-postgres-", dir=tmp_root))
        self.data = self.root / "data"
        self.log_file = self.root / "server.log"
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._initdb()
        AT_EXIT.add(self.stop, self.description)

    @property
    def description(self) -> str:
        return f"private PostgreSQL on 127.0.0.1:{self.port} ({self.data})"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def _initdb(self) -> None:
        self.log_file.touch()
        if self._run_as is not None:
            for path in (self.root, self.log_file):
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        done = self._run(
            [
                str(self._bin / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                # The files initdb writes are fsynced by the first checkpoint; a test never pulls the power.
                "--no-sync",
            ]
        )
        if done.returncode != 0:
            shutil.rmtree(self.root, ignore_errors=True)
            raise PostgresError(f"initdb failed with {done.returncode}:\n{done.stdout}")

    def _run(self, argv: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        user = self._run_as
        return subprocess.run(
            argv,
            env=self._environment(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )

    def _environment(self) -> dict[str, str]:
        # From scratch: PGDATA, PGPORT or PGHOST from the caller's shell must not point these at the shared
        # cluster.
        return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": str(self.root)}

    def start(self) -> None:
        """Start the server on its data dir (running crash recovery after a kill); return once it accepts
        connections."""
        if self.running:
            raise PostgresError(f"{self.description} is already running")
        if not self.data.is_dir():
            raise PostgresError(f"{self.description} was removed")
        began = time.monotonic()
        options = [f"--{name.replace('_', '-')}={value}" for name, value in SETTINGS.items()]
        user = self._run_as
        with self.log_file.open("ab") as out:
            out.write(b"\n==== eventagg tests: starting the server ====\n")
            out.flush()
            # The postmaster itself, not pg_ctl: its pid is the one to kill, and a new session makes every
            # backend it forks a member of one process group that kill() can reach at once.
            self._proc = subprocess.Popen(
                [
                    str(self._bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    # Its socket in its own directory: /var/run/postgresql belongs to the shared cluster.
                    f"--unix-socket-directories={self.root}",
                    *options,
                ],
                env=self._environment(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
            )
        try:
            self._wait_until_ready(began + START_TIMEOUT)
        except BaseException:
            self.kill()
            raise
        log.info("%s ready after %.2fs", self.description, time.monotonic() - began)

    def _wait_until_ready(self, deadline: float) -> None:
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise PostgresError(
                    f"{self.description} exited with {code} while starting\n{self.log_tail()}"
                )
            # pg_isready speaks the protocol: a port some other process holds does not count.
            ready = subprocess.run(
                [str(self._bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"],
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PostgresError(
                    f"{self.description} not accepting connections after {START_TIMEOUT:.0f}s\n"
                    f"{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once, like kill -9 of the whole server; keep the data.

        Returns once none of them is left, so that a start() right after finds the port free and no process
        still attached to the old shared memory (the postmaster refuses to start while one is).
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        group = proc.pid  # start_new_session: the postmaster leads its own process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        proc.wait(KILL_TIMEOUT)  # our child: reap it
        deadline = time.monotonic() + KILL_TIMEOUT
        while members := _group_members(group):
            # Anything forked while the first signal was on its way.
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise PostgresError(f"{self.description}: processes {members} survived SIGKILL")
            time.sleep(POLL_INTERVAL / 5)
        log.info("%s killed", self.description)

    def restart(self) -> None:
        self.kill()
        self.start()

    def shutdown(self) -> None:
        """A fast shutdown (SIGINT: sessions ended, a checkpoint written); the data dir stays for start()."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored a fast shutdown for %.0fs", self.description, STOP_TIMEOUT)
        self.kill()

    def group_pids(self) -> list[int]:
        """The postmaster and every backend it forked, for resource sampling."""
        pid = self.pid
        return [] if pid is None else _group_members(pid)

    def stop(self) -> None:
        """Shut the server down (fast shutdown, SIGKILL if it will not) and delete its directory."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown: sessions are ended, nothing waits for clients.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s ignored a fast shutdown for %.0fs, killing it", self.description, STOP_TIMEOUT
                )
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        AT_EXIT.discard(self.stop)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with the psql client (no driver needed); the unaligned, tuples-only output."""
        done = self._run(
            [
                str(self._bin / "psql"),
                "--no-psqlrc",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ],
            timeout=60,
        )
        if done.returncode != 0:
            raise PostgresError(f"psql {sql!r} on {self.description}: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no log at {self.log_file}: {exc})"
        return f"--- last lines of {self.log_file} ---\n" + "\n".join(lines[-LOG_TAIL_LINES:])

    def __repr__(self) -> str:
        return f"<PrivatePostgres {self.description}>"


def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        raise PostgresError(
            f"running as root and there is no {RUN_AS!r} user; PostgreSQL refuses to run as root"
        ) from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _group_members(group: int) -> list[int]:
    """The pids of the process group's members that have not exited (zombies do not count)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = pathlib.Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # Fields after "(comm)", which may itself contain spaces and parentheses.
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[STAT_PGRP]) == group and fields[STAT_STATE] not in ("Z", "X"):
            members.append(int(entry))
    return members
