"""The consumer image's healthcheck: `python -m consumer.healthcheck` exits 0 while the consumer consumes.

Three facts, each read inside the container (no curl, no extra broker connection every few seconds):

1. the status file beside the store (contract/status.py) says `consuming`: the store takes commits and a
   subscription is open on the broker (`connecting` while it is not, e.g. a channel restore that blocks);
2. the pid in it is a live `python -m consumer` that started before the file was written. The file lives on
   the store volume and outlives containers, so one left by a killed consumer must not count, even though
   the new consumer may well have the same pid;
3. that process holds an established TCP connection to one of the broker nodes in AMQP_URL. The socket
   shows the consumer is still connected now, and the AMQP heartbeat makes the broker drop it when the
   consumer stops answering.

Linux only (it reads /proc), which is what the image runs on.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from consumer.settings import ConsumerSettings
from contract import status as status_file

PROC = Path("/proc")
TCP_ESTABLISHED = "01"
# Process start times come from the kernel in clock ticks since boot, and boot time in whole seconds.
CLOCK_SLACK = 2.0


class Unhealthy(Exception):
    """One sentence saying which fact does not hold."""


def check(settings: ConsumerSettings) -> str:
    """A one-line description of the healthy consumer, or Unhealthy saying what is wrong."""
    try:
        status = status_file.read(settings.db_path)
    except status_file.UnreadableStatus as exc:
        raise Unhealthy(str(exc)) from exc
    path, pid, since = status_file.path_for(settings.db_path), status.pid, status.since
    if status.state != "consuming":
        raise Unhealthy(f"consumer state is {status.state!r} since {since}: {status.detail}")
    started = _start_time(pid)
    if started is None or not _is_consumer(pid):
        raise Unhealthy(f"the consumer that wrote {path} (pid {pid}) is not running")
    if started > status.since_epoch() + CLOCK_SLACK:
        raise Unhealthy(f"{path} was written by an earlier consumer than pid {pid}")
    nodes = [_broker_address(url) for url in settings.amqp_urls()]
    connected = next((node for node in nodes if _connected(pid, *node)), None)
    if connected is None:
        where = ", ".join(f"{host}:{port}" for host, port in nodes)
        raise Unhealthy(f"consumer pid {pid} has no connection to the broker at {where}")
    return f"consuming since {since}, pid {pid}, connected to {connected[0]}:{connected[1]}"


def _start_time(pid: int) -> float | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        boot = next(line for line in (PROC / "stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    # Fields after "(comm)", which may contain spaces; state is field 3 and starttime field 22 (proc(5)).
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _is_consumer(pid: int) -> bool:
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"-m" in argv and argv[argv.index(b"-m") + 1 : argv.index(b"-m") + 2] == [b"consumer"]


def _broker_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or (5671 if parts.scheme == "amqps" else 5672)


def _connected(pid: int, host: str, port: int) -> bool:
    try:
        addresses: set[str] | None = {
            str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        }
    except OSError:
        addresses = None  # DNS hiccup: the port alone has to do
    inodes = _socket_inodes(pid)
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_ip, remote_port = _decode(fields[2])
            if (
                fields[3] == TCP_ESTABLISHED
                and fields[9] in inodes
                and remote_port == port
                and (addresses is None or remote_ip in addresses)
            ):
                return True
    return False


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return set()
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _decode(address: str) -> tuple[str, int]:
    """`0100007F:1628` (/proc/net/tcp: 32-bit words in host byte order) to ('127.0.0.1', 5672)."""
    hex_ip, hex_port = address.split(":")
    raw = bytes.fromhex(hex_ip)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(hex_port, 16)


def main() -> int:
    try:
        settings = ConsumerSettings()
    except ValidationError as exc:
        print(f"unhealthy: invalid configuration: {exc}")
        return 1
    try:
        print(f"healthy: {check(settings)}")
    except Unhealthy as exc:
        print(f"unhealthy: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
