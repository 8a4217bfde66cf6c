"""Owns a 3-node RabbitMQ cluster of the installed rabbitmq-server on this machine: start, ask, tear down.

Each node is a PrivateNode of broker.py (own node name, AMQP and distribution ports, data dir, marker for
kill -9) that shares one Erlang cookie with the others; nodes 2 and 3 join node 1 with `rabbitmqctl
join_cluster`. Only processes carrying a node's marker are ever signalled.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import pathlib
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from tests.harness.broker import (
    MARKER_VAR,
    START_TIMEOUT,
    BrokerError,
    PrivateNode,
    _free_port,
    _marked_processes,
)

log = logging.getLogger(__name__)

RABBITMQCTL = pathlib.Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
CLI_TIMEOUT = 60.0
SIZE = 3
# RabbitMQ 3.10's log lines for a quorum queue's election, on the new leader and on its followers.
ELECTED = re.compile(
    r"^(\S+ \S+) \[\w+\] <[\d.]+> queue '(.*)' in vhost '.*': "
    r"(?:\w+ -> leader in term: \d+|detected a new leader .* in term \d+)",
    re.M,
)


class ClusterNode(PrivateNode):
    """A private node that shares its cluster's cookie and is ready once guest can log in.

    PrivateNode also waits for every recovered quorum queue to elect itself leader; in a cluster a restarted
    node's members rejoin as followers, which is the normal case, not a stuck queue.
    """

    def __init__(self, tmp_root: pathlib.Path, cookie: str, management: bool = False) -> None:
        # With the management plugin (slower to boot): its HTTP API on 127.0.0.1:management_port.
        self.management_port = _free_port() if management else None
        super().__init__(tmp_root)
        path = self.root / "home" / ".erlang.cookie"
        path.write_text(cookie)
        path.chmod(0o400)
        user = self._run_as
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    def _write_config(self) -> None:
        super()._write_config()
        if self.management_port is None:
            return
        with (self.root / "rabbitmq.conf").open("a") as conf:
            conf.write(
                f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
                # Statistics every 2 s rather than 5: the soak samples connections and channels every 10 s.
                "collect_statistics_interval = 2000\n"
            )
        (self.root / "enabled_plugins").write_text("[rabbitmq_management].\n")

    @property
    def management_url(self) -> str | None:
        return None if self.management_port is None else f"http://127.0.0.1:{self.management_port}"

    def pids(self) -> list[int]:
        """Every live process of this node (the VM and its helpers), for resource sampling."""
        return sorted(_marked_processes(self._marker)) if self.running else []

    def _wait_until_ready(self, deadline: float, log_offset: int) -> None:
        # The greeting and a login only: where a cluster's quorum queues lead is asked of the cluster
        # (Cluster.queue_status), not read from one node's boot log.
        self._wait_for_login(deadline)

    def ctl(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """`rabbitmqctl -n <this node> args...`; its output, or BrokerError saying what went wrong."""
        env = {k: v for k, v in self._environment().items() if k != MARKER_VAR}
        user = self._run_as
        try:
            done = subprocess.run(
                [str(RABBITMQCTL), "-n", self.node_name, *args],
                env=env,
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=timeout,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(
                f"rabbitmqctl {' '.join(args)} on {self.node_name}: no answer in {timeout}s"
            ) from exc
        if done.returncode != 0:
            raise BrokerError(
                f"rabbitmqctl {' '.join(args)} on {self.node_name} exited {done.returncode}:\n"
                f"{done.stdout}{done.stderr}"
            )
        return done.stdout


@dataclass(frozen=True)
class QueueStatus:
    leader: str
    members: frozenset[str]
    online: frozenset[str]


class Cluster:
    """Three ClusterNodes joined into one cluster; `urls` is what AMQP_URL gets."""

    def __init__(
        self, tmp_root: pathlib.Path, management: bool = False, cli_timeout: float = CLI_TIMEOUT
    ) -> None:
        cookie = secrets.token_hex(16).upper()
        self.nodes = [ClusterNode(tmp_root, cookie, management) for _ in range(SIZE)]
        # How long the joins' rabbitmqctl calls may take (a machine under heavy load needs more).
        self.cli_timeout = cli_timeout

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def amqp_url(self) -> str:
        return ",".join(self.urls)

    def running(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running]

    def start(self) -> None:
        began = time.monotonic()
        _each(self.nodes, lambda node: node.start())
        first = self.nodes[0]

        def join(node: ClusterNode) -> None:
            node.ctl("stop_app", timeout=self.cli_timeout)
            node.ctl("join_cluster", first.node_name, timeout=self.cli_timeout)
            node.ctl("start_app", timeout=self.cli_timeout)
            node._wait_until_ready(time.monotonic() + START_TIMEOUT, 0)

        # One at a time: two nodes joining at once can both be rebuilding their Mnesia schema from the first
        # node, and under load one of them then fails to start (`{mnesia_app,start}` from start_app).
        for node in self.nodes[1:]:
            join(node)
        members = set(
            json.loads(first.ctl("cluster_status", "--formatter", "json", timeout=self.cli_timeout))[
                "running_nodes"
            ]
        )
        if members != {node.node_name for node in self.nodes}:
            raise BrokerError(f"the cluster formed with {sorted(members)} running, not all {SIZE} nodes")
        log.info("cluster of %d nodes up after %.1fs: %s", SIZE, time.monotonic() - began, self.amqp_url)

    def node_at(self, url_or_port: str | int) -> ClusterNode:
        for node in self.nodes:
            if node.url == url_or_port or node.port == url_or_port:
                return node
        raise BrokerError(f"no node of this cluster at {url_or_port!r}")

    def queue_status(self, queue: str) -> QueueStatus:
        """The quorum queue's leader, members and online members, as a running node sees them."""
        asked = self.running()[0]
        columns = ("name", "leader", "members", "online")
        rows = json.loads(asked.ctl("list_queues", *columns, "--formatter", "json"))
        for row in rows:
            if row["name"] == queue:
                return QueueStatus(row["leader"], frozenset(row["members"]), frozenset(row["online"]))
        raise BrokerError(f"{asked.node_name} knows no queue {queue!r}")

    def leader(self, queue: str) -> ClusterNode:
        name = self.queue_status(queue).leader
        return next(node for node in self.nodes if node.node_name == name)

    def elected_after(self, queue: str, after: float) -> float | None:
        """When the first node logged a new leader of the queue after `after` (epoch seconds), if any did."""
        times = []
        for node in self.nodes:
            text = node.log_file.read_text(errors="replace")
            for stamp, name in ELECTED.findall(text):
                when = datetime.fromisoformat(stamp).timestamp()
                if name == queue and when > after:
                    times.append(when)
        return min(times, default=None)

    def wait_for_quorum_queue_registration(self, queue: str) -> None:
        """Every node has the queue in Ra's registry, so that no kill -9 can lose it (broker.py)."""
        for node in self.nodes:
            node.wait_for_quorum_queue_registration(queue)

    def stop(self) -> None:
        _each(self.nodes, lambda node: node.stop())


def _each(nodes: Iterable[ClusterNode], action: Callable[[ClusterNode], None]) -> None:
    """Run `action` on every node at once (a node start is mostly waiting); raise the first failure."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=SIZE, thread_name_prefix="cluster") as pool:
        for future in [pool.submit(action, node) for node in nodes]:
            future.result()
