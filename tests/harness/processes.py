"""Runs the deployables as real processes (`python -m consumer|api|publisher`) for end-to-end tests."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.harness.cleanups import Cleanups
from tests.harness.waiting import GiveUp

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Deployment:
    """The configuration one test's processes share: its own exchange, queue, store and api port."""

    amqp_url: str
    exchange: str
    queue: str
    db_path: Path
    logs: Path
    api_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    # postgresql://... runs the consumer and the api on PostgreSQL (DATABASE_URL); None: SQLite at db_path.
    database_url: str | None = None

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.exchange}.dead"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            # A DATABASE_URL of the machine's own must not move a test onto another store.
            **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
            "AMQP_URL": self.amqp_url,
            "AMQP_EXCHANGE": self.exchange,
            "AMQP_QUEUE": self.queue,
            "DB_PATH": str(self.db_path),
            "API_PORT": str(self.api_port),
            "API_HOST": "127.0.0.1",
            "API_URL": self.api_url,
            "LOG_LEVEL": "INFO",
            # Several consumers run at once in some tests; the one that checks metrics picks a free port.
            "METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
            **({"DATABASE_URL": self.database_url} if self.database_url else {}),
            **self.extra_env,
            **overrides,
        }
        return env


class Process:
    """One deployable as a child process with its output in a log file."""

    def __init__(
        self,
        module: str,
        deployment: Deployment,
        args: list[str],
        env: dict[str, str],
        stdin: bytes | None = None,
        keep_stdin: bool = False,
    ) -> None:
        self.module = module
        index = len(list(deployment.logs.glob(f"{module}-*.log")))
        self.log_path = deployment.logs / f"{module}-{index}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        )
        if stdin is not None and self.popen.stdin is not None:
            self.popen.stdin.write(stdin)
            # keep_stdin: the caller goes on writing (popen.stdin) and closes it when done.
            if keep_stdin:
                self.popen.stdin.flush()
            else:
                self.popen.stdin.close()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def still_running(self) -> None:
        """For a probe: a process that exited will never get where the test waits for it to get."""
        code = self.popen.poll()
        if code is not None:
            raise GiveUp(f"{self.module} exited {code} while a test waited on it:\n{self.output()[-4000:]}")

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=timeout)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def output(self) -> str:
        if not self._log.closed:  # a retired process's log is closed, and still readable
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.alive:
            self.popen.kill()
            self.popen.wait(timeout=10)
        self._log.close()


class Processes:
    """Starts processes for one test and kills whatever is left at teardown, the last started first."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.all: list[Process] = []
        self._cleanups = Cleanups()

    def start(
        self, module: str, *args: str, stdin: bytes | None = None, keep_stdin: bool = False, **env: str
    ) -> Process:
        process = Process(module, self.deployment, list(args), self.deployment.env(**env), stdin, keep_stdin)
        self.all.append(process)
        self._cleanups.add(process.close, f"{module} pid {process.popen.pid}")
        return process

    def consumer(self, **env: str) -> Process:
        return self.start("consumer", **env)

    def api(self, **env: str) -> Process:
        return self.start("api", **env)

    def publish(self, *args: str, timeout: float = 120.0, **env: str) -> dict[str, Any]:
        """Run the CLI to completion with --json; returns its summary (exit code included)."""
        process = self.start("publisher", *args, "--json", "--quiet", **env)
        code = process.wait(timeout)
        lines = [line for line in process.output().splitlines() if line.startswith("{")]
        if not lines:
            raise AssertionError(f"publisher exited {code} without a summary:\n{process.output()}")
        summary: dict[str, Any] = json.loads(lines[-1])
        assert summary["exit_code"] == code
        return summary

    def close(self) -> None:
        self._cleanups.run()


@functools.cache
def _tls() -> ssl.SSLContext:
    # Tests poll the api every few milliseconds; a client made without a context loads the CA bundle each
    # time, 37 ms of CPU per call measured here, which alone kept a core busy while a test waited.
    return ssl.create_default_context()


def api_get(deployment: Deployment, path: str, **params: Any) -> httpx.Response:
    with httpx.Client(base_url=deployment.api_url, timeout=10, verify=_tls()) as client:
        return client.get(path, params=params)


def event_ids(deployment: Deployment, page_size: int, params: dict[str, Any]) -> list[str]:
    """The event ids of every page of `page_size` of GET /events with `params`, following the Link header;
    every page must answer 200."""
    out: list[str] = []
    with httpx.Client(timeout=10, verify=_tls()) as client:
        answer = client.get(f"{deployment.api_url}/events", params={"limit": page_size, **params})
        while True:
            assert answer.status_code == 200, answer.text
            out += [e["event_id"] for e in answer.json()]
            url = answer.links.get("next", {}).get("url")
            if url is None:
                return out
            answer = client.get(url)


def all_events(deployment: Deployment, topic: str | None = None) -> list[dict[str, Any]]:
    """Every stored event through the api's pages, following the Link header."""
    events: list[dict[str, Any]] = []
    with httpx.Client(timeout=10, verify=_tls()) as client:
        url: str | None = f"{deployment.api_url}/events?limit=1000" + (f"&topic={topic}" if topic else "")
        while url is not None:
            response = client.get(url)
            response.raise_for_status()
            events.extend(response.json())
            url = response.links.get("next", {}).get("url")
    return events
