"""Owns finding, starting, crashing and cleaning up the real RabbitMQ broker the test suite runs against."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import pathlib
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Collection, Coroutine
from typing import Any

import aio_pika

from tests.harness.cleanups import AT_EXIT

log = logging.getLogger(__name__)

RABBITMQ_SERVER = pathlib.Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
RABBITMQ_USER = "rabbitmq"

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
KILL_TIMEOUT = 10.0
# Recovered quorum queues elect themselves leader within a second; anything slower is stuck for good.
QUORUM_RECOVERY_GRACE = 15.0
REGISTRATION_TIMEOUT = 10.0
POLL_INTERVAL = 0.1
LOG_TAIL_LINES = 40

# Every process of a private node inherits this variable; it is how kill() finds them all, including
# erl_child_setup and inet_gethost, which call setsid() and so leave the node's process group.
MARKER_VAR = "EVENTAGG_TEST_BROKER_ID"
# Indexes into the fields of /proc/<pid>/stat that follow "(comm)": proc(5) fields 3 and 22.
STAT_STATE = 0
STAT_START_TIME = 19

AMQP_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
AMQP_FRAME_METHOD = 1
AMQP_CONNECTION_START = (10, 10)

# RabbitMQ's own log lines (3.10); if a version words them differently start() just skips that wait.
RECOVERED_QUORUM_QUEUES = re.compile(r"Recovering (\d+) queues of type rabbit_quorum_queue")
QUORUM_LEADER = re.compile(r"queue '(.*)' in vhost '(.*)': \w+ -> leader in term")


class BrokerError(RuntimeError):
    """The broker could not be found, started, killed or stopped."""


class Broker:
    """A broker whose process the tests do not control (AMQP_URL, or the base for controllable ones)."""

    killable: bool = False

    def __init__(self, url: str, description: str) -> None:
        self.url = url
        self.description = description

    def kill(self) -> None:
        raise BrokerError(f"cannot kill {self.description}: the tests do not own its process")

    def start(self) -> None:
        raise BrokerError(f"cannot start {self.description}: the tests do not own its process")

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        """Nothing to stop: whoever provided the broker keeps it running."""

    def wait_for_quorum_queue_registration(self, queue: str, vhost: str = "/") -> None:
        """Nothing to wait for: a broker that cannot be killed cannot lose a queue to kill()."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description} {self.url}>"


class PrivateNode(Broker):
    """A RabbitMQ node of the installed rabbitmq-server package, private to this test session."""

    killable = True

    def __init__(self, tmp_root: pathlib.Path, server: pathlib.Path = RABBITMQ_SERVER) -> None:
        self._server = server
        self._run_as = _unprivileged_user()
        self.root = _make_node_dir(tmp_root, self._run_as)
        self.node_name = f"eventagg-test-{secrets.token_hex(4)}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port(avoid={self.port})
        self.log_file = self.root / "node.log"
        self._marker = secrets.token_hex(8)
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_config()
        super().__init__(f"amqp://guest:guest@127.0.0.1:{self.port}/", f"private node {self.node_name}")
        AT_EXIT.add(self.stop, self.description)

    def _write_config(self) -> None:
        for sub in ("home", "mnesia", "log", "conf.d"):
            (self.root / sub).mkdir()
        (self.root / "rabbitmq.conf").write_text(
            # Loopback only, so guest/guest is allowed and nothing outside this machine sees the node.
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            # A CI disk can be nearly full; the default 50 MB relative limit would block publishers.
            "disk_free_limit.absolute = 50MB\n"
        )
        (self.root / "advanced.config").write_text("[].\n")
        # No management plugin or anything else: faster boot, and no second port to collide on.
        (self.root / "enabled_plugins").write_text("[].\n")
        # The system rabbitmq-env.conf names the shared node (NODENAME=rabbit@localhost); an empty one
        # keeps it out, since both the shell scripts and the Erlang side would read it.
        (self.root / "rabbitmq-env.conf").write_text("")
        self.log_file.touch()
        if self._run_as is not None:
            _chown_tree(self.root, self._run_as)

    def _environment(self) -> dict[str, str]:
        # Built from scratch rather than copied: ERL_FLAGS, NOTIFY_SOCKET (which makes the script exec
        # erl directly) or RABBITMQ_* from the caller's shell must not leak into this node.
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            # A private HOME gives the node its own Erlang cookie instead of the shared node's.
            "HOME": str(self.root / "home"),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            # The default is NODE_PORT + 20000, which can be anything, including a port in use.
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # Only matters if this node is the one that has to launch epmd.
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            # Everything on stdout, i.e. in node.log, so a failed start can show one file's tail.
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            # Otherwise /etc/rabbitmq/conf.d/*.conf and /etc/rabbitmq/advanced.config would apply too.
            "RABBITMQ_CONFIG_FILES": str(self.root / "conf.d"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            MARKER_VAR: self._marker,
        }

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the node on its existing data dir; return once guest can log in and every recovered
        quorum queue has a leader again."""
        if self.running:
            raise BrokerError(f"{self.description} is already running")
        if not self.root.is_dir():
            raise BrokerError(f"{self.description} was stopped; its data dir {self.root} is gone")
        began = time.monotonic()
        with self.log_file.open("ab") as out:
            out.write(f"\n==== eventagg tests: starting {self.node_name} ====\n".encode())
            out.flush()
            log_offset = out.tell()
            user = self._run_as
            # The script traps SIGTERM and forwards it to the VM for a graceful stop, and in this mode it
            # forks erl (-> erlexec -> beam.smp) instead of exec'ing it; a new session puts the script and
            # the VM in one process group so kill() can reach both at once.
            self._proc = subprocess.Popen(
                [str(self._server)],
                env=self._environment(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Not runuser: it resets HOME to /var/lib/rabbitmq and with it the shared node's cookie.
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
            )
        try:
            self._wait_until_ready(began + START_TIMEOUT, log_offset)
        except BaseException:
            self.kill()
            raise
        log.info("%s ready on port %d after %.2fs", self.description, self.port, time.monotonic() - began)

    def _wait_for_login(self, deadline: float) -> None:
        # A TCP connect alone proves nothing (another process may own the port); the AMQP greeting does.
        while not _speaks_amqp(self.port):
            self._check_progress(deadline, "no AMQP greeting")
            time.sleep(POLL_INTERVAL)
        while True:
            try:
                _run_in_fresh_loop(_log_in, self.url)
                return
            except Exception as exc:
                self._check_progress(deadline, f"guest cannot log in: {exc!r}")
            time.sleep(POLL_INTERVAL)

    def _wait_until_ready(self, deadline: float, log_offset: int) -> None:
        self._wait_for_login(deadline)
        # The listener opens only after the Ra systems are up, so a new quorum queue can be declared at
        # once (seen with 3.10), but queues recovered from disk still have to elect a leader; until then a
        # passive declare reports 0 messages and consumers get nothing.
        grace = min(deadline, time.monotonic() + QUORUM_RECOVERY_GRACE)
        while True:
            boot_log = self._read_log(log_offset)
            found = RECOVERED_QUORUM_QUEUES.search(boot_log)
            if found is None:
                log.debug("%s: no quorum queue recovery line in its log; not waiting for leaders", self)
                return
            recovered = int(found.group(1))
            # From the top of this boot: an election can be logged before the recovery summary line.
            leaders = {m.groups() for m in QUORUM_LEADER.finditer(boot_log)}
            if len(leaders) >= recovered:
                return
            self._check_progress(
                deadline, f"{len(leaders)} of {recovered} recovered quorum queues have a leader"
            )
            if time.monotonic() > grace:
                raise BrokerError(
                    f"{self.description}: only {len(leaders)} of {recovered} recovered quorum queues "
                    f"elected a leader within {QUORUM_RECOVERY_GRACE:.0f}s; the others are stuck for good. "
                    "RabbitMQ 3.10 (Ra 2.2) flushes its registry of quorum queues (names.dets) 500 ms after "
                    "its last change, so a queue declared less than ~1 s before a SIGKILL comes back as an "
                    "empty member that never elects itself (fixed upstream in rabbitmq/ra#443). Call "
                    "wait_for_quorum_queue_registration() between declaring a queue and kill().\n"
                    f"{self._log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def _read_log(self, offset: int) -> str:
        with self.log_file.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def wait_for_quorum_queue_registration(self, queue: str, vhost: str = "/") -> None:
        """Block until kill() can no longer lose this freshly declared quorum queue (see start())."""
        # The Ra server name is an atom '<vhost>_<queue>' (the default vhost spelled %2F), stored verbatim
        # in the registry file once Ra has flushed it.
        server = f"{'%2F' if vhost == '/' else vhost}_{queue}".encode()
        deadline = time.monotonic() + REGISTRATION_TIMEOUT
        while not any(server in path.read_bytes() for path in self.root.glob("mnesia/*/quorum/*/names.dets")):
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{self.description}: quorum queue {queue!r} in vhost {vhost!r} is not in Ra's registry "
                    f"after {REGISTRATION_TIMEOUT:.0f}s; was it declared, as a quorum queue, on this node?"
                )
            time.sleep(POLL_INTERVAL)

    def _check_progress(self, deadline: float, waiting_for: str) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            code = None if proc is None else proc.returncode
            raise BrokerError(
                f"{self.description} exited with code {code} while starting\n{self._log_tail()}"
            )
        if time.monotonic() > deadline:
            raise BrokerError(
                f"{self.description} not ready after {START_TIMEOUT:.0f}s ({waiting_for})\n{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no log at {self.log_file}: {exc})"
        return f"--- last lines of {self.log_file} ---\n" + "\n".join(lines[-LOG_TAIL_LINES:])

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM and all its helpers at once, like kill -9; keep its data dir."""
        proc, self._proc = self._proc, None
        # Listed before any signal: a dying process loses its environ (the marker) before its sockets.
        victims = _marked_processes(self._marker)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_TIMEOUT
        while True:
            # The group kill misses the helpers that setsid() (erl_child_setup, inet_gethost) and anything
            # spawned meanwhile; they would die with the VM anyway, but not necessarily before we return.
            victims |= _marked_processes(self._marker)
            # Filtered first, so a pid that a new process has taken over is never signalled.
            victims = {pid: since for pid, since in victims.items() if _running(pid, since)}
            if not victims:
                break
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise BrokerError(f"{self.description}: processes {sorted(victims)} survived SIGKILL")
            time.sleep(POLL_INTERVAL / 5)
        if proc is not None:
            proc.wait(KILL_TIMEOUT)  # our child: reap it
            log.info("%s killed", self.description)

    def stop(self) -> None:
        """Shut the node down gracefully (SIGKILL if it will not) and delete its data dir."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # To the script only: its trap forwards one SIGTERM to the VM, which then stops cleanly.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0fs, killing it", self.description, STOP_TIMEOUT)
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        AT_EXIT.discard(self.stop)
        log.info("%s stopped and %s removed", self.description, self.root)


class DockerBroker(Broker):
    """A throwaway RabbitMQ container; its process is Docker's, so it is not killable here."""

    def __init__(self, container: Any, url: str) -> None:
        super().__init__(url, "RabbitMQ container")
        self._container = container

    @classmethod
    def launch(cls) -> DockerBroker:
        with warnings.catch_warnings():
            # testcontainers decorates RabbitMqContainer with an API it deprecates itself, at import time;
            # with the suite's filterwarnings=error that import would otherwise fail.
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.community.rabbitmq import RabbitMqContainer

            container = RabbitMqContainer("rabbitmq:3.13-alpine")
        try:
            container.start()
        except BaseException:
            container.stop()
            raise
        host = container.get_container_host_ip()
        port = container.get_exposed_port(container.port)
        url = f"amqp://{container.username}:{container.password}@{host}:{port}/"
        log.info("RabbitMQ container up at %s", url)
        return cls(container, url)

    def stop(self) -> None:
        self._container.stop()


def find_broker(tmp_root: pathlib.Path) -> Broker:
    """Return a running broker: AMQP_URL, else a private node of the local package, else a container."""
    url = os.environ.get("AMQP_URL")
    if url:
        log.info("using the broker from AMQP_URL")
        return Broker(url, "the AMQP_URL broker")
    if RABBITMQ_SERVER.exists():
        node = PrivateNode(tmp_root)
        try:
            node.start()
        except BaseException:
            node.stop()
            raise
        return node
    if _docker_answers():
        return DockerBroker.launch()
    raise BrokerError(
        "no RabbitMQ for the tests; provide one of:\n"
        "  - AMQP_URL=amqp://user:pass@host:port/ pointing at a broker the tests may use;\n"
        f"  - the rabbitmq-server package (apt-get install -y rabbitmq-server), so {RABBITMQ_SERVER} "
        "can run a private node;\n"
        "  - a running Docker engine, for a testcontainers RabbitMQ container."
    )


def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RABBITMQ_USER)
    except KeyError:
        # The package creates this user, so this is a half-installed system; Erlang does run as root.
        log.warning("running as root and there is no %r user; the private node runs as root", RABBITMQ_USER)
        return None


def _make_node_dir(tmp_root: pathlib.Path, user: pwd.struct_passwd | None) -> pathlib.Path:
    parent: pathlib.Path | None = tmp_root
    if user is not None and not _traversable_by(tmp_root, user):
        # pytest's tmp dirs sit under a 0700 /tmp/pytest-of-root that the rabbitmq user cannot enter.
        log.info("%s is closed to %s; putting the node dir in the system temp dir", tmp_root, user.pw_name)
        parent = None
    return pathlib.Path(tempfile.mkdtemp(prefix="eventagg-rabbitmq-", dir=parent))


def _traversable_by(path: pathlib.Path, user: pwd.struct_passwd) -> bool:
    for directory in (path.resolve(), *path.resolve().parents):
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _chown_tree(root: pathlib.Path, user: pwd.struct_passwd) -> None:
    for path in (root, *root.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid)


def _free_port(avoid: Collection[int] = ()) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in avoid:
            return port


def _speaks_amqp(port: int) -> bool:
    """Whether something on the port answers the AMQP 0-9-1 protocol header with Connection.Start."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(AMQP_PROTOCOL_HEADER)
            head = _recv_exactly(sock, 11)
    except OSError:
        return False
    frame_type, channel, _size, class_id, method_id = struct.unpack(">BHIHH", head)
    return frame_type == AMQP_FRAME_METHOD and channel == 0 and (class_id, method_id) == AMQP_CONNECTION_START


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed during AMQP greeting")
        data += chunk
    return data


async def _log_in(url: str) -> None:
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        await connection.channel()


def _run_in_fresh_loop(probe: Callable[[str], Coroutine[Any, Any, None]], url: str) -> None:
    # start() is synchronous but is also called from async tests, whose loop is already running in this
    # thread; a worker thread with its own loop works in both cases.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-probe") as pool:
        pool.submit(asyncio.run, probe(url)).result()


def _marked_processes(marker: str) -> dict[int, str]:
    """The live processes carrying this node's marker, each with its start time (to detect pid reuse)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = pathlib.Path("/proc", entry, "environ").read_bytes()
            comm = pathlib.Path("/proc", entry, "comm").read_text().strip()
        except OSError:
            continue  # gone already, or another user's process when not root
        # epmd is started by whichever node needs it first and then serves every node on the machine.
        if needle in environ.split(b"\0") and comm != "epmd":
            fields = _stat_fields(pathlib.Path("/proc", entry, "stat"))
            if fields is not None:
                found[int(entry)] = fields[STAT_START_TIME]
    return found


def _running(pid: int, start_time: str) -> bool:
    """Whether any thread of the process has yet to exit (a zombie thread has closed its files)."""
    fields = _stat_fields(pathlib.Path("/proc", str(pid), "stat"))
    if fields is None or fields[STAT_START_TIME] != start_time:
        return False
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    # A thread group leader turns zombie while its other threads may still be exiting, holding the VM's
    # listening sockets open; so every thread counts.
    for tid in threads:
        fields = _stat_fields(pathlib.Path("/proc", str(pid), "task", tid, "stat"))
        if fields is not None and fields[STAT_STATE] not in ("Z", "X"):
            return True
    return False


def _stat_fields(path: pathlib.Path) -> list[str] | None:
    try:
        raw = path.read_text()
    except OSError:
        return None
    # Fields after "(comm)", which may itself contain spaces and parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def _docker_answers() -> bool:
    with warnings.catch_warnings():
        # docker-py leaks its socket when the engine is absent; the ResourceWarning must not surface as an
        # unraisable-exception error in whatever test happens to run the garbage collector next.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            from testcontainers.core.docker_client import DockerClient

            DockerClient().client.ping()
        except Exception as exc:
            log.info("no Docker engine: %s", exc)
            return False
        finally:
            gc.collect()
    return True
