"""Real Docker engines for tests/test_docker.py: the host's engine (started when installed but not running),
an inner Docker Engine 26 with Compose v2 run as a container on it, stand-in base images built from Debian
packages when no registry provides the real ones, and one compose project driven through the README's own
commands, with every container, network and volume it made removed afterwards.

`python -m tests.harness.docker --probe` starts the host's engine if it can (as the tests would) and exits 0
when an engine answers, 3 with the reason when none can run here (.ci/run uses it to run or skip them).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from tests.harness.waiting import GiveUp, eventually_sync

REPO = Path(__file__).resolve().parents[2]
# Outside the repository: debootstrap's results, the inner engine's images and build cache, dockerd's log.
CACHE = Path(os.environ.get("EVENTAGG_DOCKER_CACHE", "/var/cache/eventagg-docker"))
BASE_IMAGE_SCRIPT = REPO / "tests" / "harness" / "base-image.sh"
STAND_IN_LABEL = "org.eventagg.stand-in"
# compose/.env names the project; its containers, networks and volumes carry this label.
PROJECT = "eventagg"
PROJECT_LABEL = f"label=com.docker.compose.project={PROJECT}"
INNER_NAME = "eventagg-test-engine"
INNER_IMAGE = "eventagg-test-engine:26"
# Which stand-in base-image.sh builds for an image the registry could not provide, by repository name.
STAND_IN_KINDS = {"python": "python", "rabbitmq": "rabbitmq", "postgres": "postgres"}
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class EngineUnavailable(Exception):
    """No Docker engine answers here and none can be started; the text says why and what would fix it."""


def say(message: str) -> None:
    """Progress and decisions, shown while the tests run (make test-docker runs pytest with -s)."""
    print(f"test-docker: {message}", flush=True)


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def run(
    argv: list[str], timeout: float, check: bool = True, input: bytes | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """A bounded command; with `check`, a failure raises with the command's output."""
    raw = subprocess.run(
        argv,
        cwd=cwd,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )
    result = subprocess.CompletedProcess(
        argv, raw.returncode, raw.stdout.decode(errors="replace"), raw.stderr.decode(errors="replace")
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


@contextmanager
def one_run_at_a_time(timeout: float = 3600) -> Iterator[None]:
    """Holds the machine's test-docker lock: two runs would share the inner engine's container and cache and
    the host engine's `eventagg` project, and remove each other's."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "test-docker.lock").open("a+") as lock:

        def taken() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        if not taken():
            say(f"another run holds {lock.name}; waiting for it (at most {timeout:g} s)")
            eventually_sync(taken, timeout, interval=2.0, message=f"the lock {lock.name}")
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _host_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30, check=False).returncode == 0


def start_host_engine() -> str:
    """The host engine's version; starts `dockerd` when it is installed but not running, and says so."""
    if _host_answers():
        return run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=30).stdout.strip()
    if shutil.which("docker") is None:
        raise EngineUnavailable("no docker CLI here (on Debian: apt-get install docker.io)")
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineUnavailable(
            "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"
        )
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers, and starting dockerd needs root")
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "dockerd.log"
    # Detached (its own session, reparented to init), so it outlives this run: see the message below.
    started = run(["sh", "-c", f'setsid "{dockerd}" >>"{log}" 2>&1 </dev/null & echo $!'], timeout=10)
    pid = int(started.stdout.strip())

    def answers() -> bool:
        if not Path(f"/proc/{pid}").exists():
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise GiveUp("dockerd exited while starting:\n" + "\n".join(tail))
        return _host_answers()

    try:
        eventually_sync(answers, 60, interval=0.5, message="the started dockerd answering")
    except GiveUp as exc:
        raise EngineUnavailable(str(exc)) from None
    except AssertionError as exc:
        raise EngineUnavailable(f"dockerd (pid {pid}) did not answer within 60 s; see {log}") from exc
    say(
        f"the host's Docker engine was installed but not running: started dockerd (pid {pid}, log {log}). "
        f"It is left running, so the next run finds its images and build cache; stop it with `kill {pid}`."
    )
    return run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=30).stdout.strip()


# --- base images -------------------------------------------------------------------------------------------


def _image_id(image: str, docker: list[str]) -> str | None:
    result = run([*docker, "image", "inspect", "--format", "{{.Id}}", image], timeout=30, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def stand_in_note(image: str) -> str | None:
    """What the stand-in label of an image on the host says, or None for an image from a registry."""
    labels = run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", image], timeout=30
    ).stdout
    return (json.loads(labels) or {}).get(STAND_IN_LABEL)


def ensure_base_images(images: Iterable[str]) -> dict[str, str]:
    """Each image on the host engine: already there, pulled, or else a stand-in built from Debian packages.

    Returns image -> where it came from; a stand-in is announced loudly every run, never silently used.
    """
    missing = sorted(image for image in set(images) if _image_id(image, ["docker"]) is None)
    building: dict[str, subprocess.Popen[bytes]] = {}
    for image in missing:
        pulled = run(["docker", "pull", "--quiet", image], timeout=600, check=False)
        if pulled.returncode == 0:
            say(f"pulled {image} from the registry")
            continue
        kind = STAND_IN_KINDS.get(image.split(":")[0].split("/")[-1])
        if kind is None:
            raise AssertionError(f"cannot pull {image} and have no stand-in for it:\n{pulled.stderr}")
        reason = (pulled.stderr.strip().splitlines() or ["no output"])[-1]
        say(
            f"STAND-IN: {image} could not be pulled ({reason}); building a stand-in from Debian packages "
            f"({BASE_IMAGE_SCRIPT.relative_to(REPO)} {kind}). The registry's image is NOT tested by this run."
        )
        (CACHE / "logs").mkdir(parents=True, exist_ok=True)
        with (CACHE / "logs" / f"base-image-{kind}.log").open("wb") as log:
            building[image] = subprocess.Popen(
                [str(BASE_IMAGE_SCRIPT), kind, image], stdout=log, stderr=subprocess.STDOUT
            )
    for image, popen in building.items():
        # debootstrap of a whole Debian on a busy 2-core machine took 5 minutes; only the first run does it.
        code = popen.wait(1800)
        assert code == 0, f"stand-in for {image} failed ({code}); see {CACHE / 'logs'}"
    origins = {}
    for image in sorted(set(images)):
        note = stand_in_note(image)
        origins[image] = f"STAND-IN ({note})" if note else "from a registry"
        say(f"base image {image}: {origins[image]}")
    return origins


# --- engines ---------------------------------------------------------------------------------------------


@dataclass
class Engine:
    """Where compose runs: the host's engine with Debian's docker-compose v1, or the inner engine with v2."""

    name: str
    compose: list[str]
    # Prefix that runs a command where that engine's CLI and published ports are.
    prefix: list[str] = field(default_factory=list)
    workdir: Path = REPO

    def docker(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.prefix, "docker", *args], timeout=timeout, check=check)

    def version(self) -> str:
        return self.docker("version", "--format", "{{.Server.Version}}").stdout.strip()

    def compose_version(self) -> str:
        return run([*self.prefix, *self.compose, "version", "--short"], timeout=60).stdout.strip()

    def get_json(self, url: str, auth: tuple[str, str] | None = None) -> Any:
        """GET on a port the compose project published on this engine's machine."""
        if not self.prefix:
            response = httpx.get(url, auth=auth, timeout=10)
            response.raise_for_status()
            return response.json()
        user = ["-u", f"{auth[0]}:{auth[1]}"] if auth else []
        return json.loads(
            run([*self.prefix, "curl", "-fsS", "--max-time", "10", *user, url], timeout=20).stdout
        )


def host_engine() -> Engine:
    if shutil.which("docker-compose") is None:
        unavailable("no docker-compose (v1) for the host engine: apt-get install docker-compose")
    return Engine("docker-compose v1 on the host engine", ["docker-compose"])


class InnerEngine:
    """Debian trixie's Docker Engine 26 with Compose v2, as a container on the host engine (whose version may
    be too old for what is tested, and which has no Compose v2). Its /var/lib/docker is a directory in CACHE,
    so images and build cache survive from one run to the next; the container itself is removed."""

    def __init__(self) -> None:
        self.engine = Engine(
            "docker compose v2 on an inner Engine 26",
            ["docker", "compose"],
            prefix=["docker", "exec", "-i", "-w", "/repo", INNER_NAME],
            workdir=Path("/repo"),
        )

    def start(self, base_images: Iterable[str]) -> Engine:
        if _image_id(INNER_IMAGE, ["docker"]) is None:
            say(f"building {INNER_IMAGE} from Debian trixie's docker.io, docker-compose and docker-buildx")
            run([str(BASE_IMAGE_SCRIPT), "engine", INNER_IMAGE], timeout=1800)
        self.remove()
        lib = CACHE / "inner-engine"
        lib.mkdir(parents=True, exist_ok=True)
        # --privileged is refused where the host's capability bounding set lacks CAP_SYS_RESOURCE ("unable
        # to apply caps"); every other capability, unconfined, and the host's cgroups are what dockerd needs.
        run(
            [
                "docker", "run", "-d", "--name", INNER_NAME, "--hostname", INNER_NAME,
                "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
                "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                "--security-opt", "systempaths=unconfined",
                "-v", "/sys/fs/cgroup:/sys/fs/cgroup", "-v", f"{lib}:/var/lib/docker", "-v", f"{REPO}:/repo",
                INNER_IMAGE, "dockerd", "-H", "unix:///var/run/docker.sock",
            ],
            timeout=60,
        )  # fmt: skip

        def answers() -> bool:
            if self.engine.docker("info", timeout=30, check=False).returncode == 0:
                return True
            state = run(
                ["docker", "inspect", "--format", "{{.State.Status}}", INNER_NAME], timeout=30, check=False
            )
            if state.stdout.strip() in ("exited", "dead"):
                logs = run(["docker", "logs", "--tail", "15", INNER_NAME], timeout=30, check=False)
                status = state.stdout.strip()
                raise GiveUp(f"the inner dockerd's container {status}:\n{logs.stderr}{logs.stdout}")
            return False

        eventually_sync(answers, 90, interval=0.5, message="the inner dockerd answering")
        for image in sorted(set(base_images)):
            host_id = _image_id(image, ["docker"])
            if host_id != _image_id(image, [*self.engine.prefix, "docker"]):
                started = time.monotonic()
                saved = subprocess.run(
                    ["docker", "save", image], capture_output=True, timeout=300, check=True
                )
                run([*self.engine.prefix, "docker", "load", "--quiet"], timeout=300, input=saved.stdout)
                say(f"loaded {image} into the inner engine in {time.monotonic() - started:.0f} s")
        return self.engine

    def remove(self) -> None:
        if run(["docker", "container", "inspect", INNER_NAME], timeout=30, check=False).returncode == 0:
            # A clean dockerd shutdown first: it stops what runs inside and leaves its store consistent.
            run(["docker", "stop", "--time", "30", INNER_NAME], timeout=60, check=False)
            run(["docker", "rm", "--force", "--volumes", INNER_NAME], timeout=60)


# --- one compose project -----------------------------------------------------------------------------------


def leftovers(engine: Engine) -> dict[str, list[str]]:
    """The project's containers, networks and volumes on that engine."""
    found = {}
    for kind in ("container", "network", "volume"):
        listing = engine.docker(kind, "ls", *(["-a"] if kind == "container" else []), "-q", "--filter",
                                PROJECT_LABEL).stdout.split()  # fmt: skip
        if listing:
            found[kind] = listing
    return found


def remove_leftovers(engine: Engine) -> dict[str, list[str]]:
    """Remove what the project left (only called for a project this run created); what could not go."""
    found = leftovers(engine)
    for kind in ("container", "network", "volume"):
        if found.get(kind):
            engine.docker(kind, "rm", *(["--force"] if kind != "network" else []), *found[kind], check=False)
    return leftovers(engine)


class Up:
    """The README's command, `docker compose -f compose/compose.yaml up --build`, in the foreground with its
    output in a file; interrupt() is the user's Ctrl-C."""

    PID_FILE = "/run/compose-up.pid"

    def __init__(self, engine: Engine, files: list[str], log: Path) -> None:
        self.engine = engine
        self.log_path = log
        self.argv = [*engine.compose, *files, "up", "--build"]
        self._log = log.open("wb")
        if engine.prefix:
            # The pid inside the inner engine's container, for the Ctrl-C: `docker exec` forwards no signals.
            inner = ["sh", "-c", f'echo $$ > {self.PID_FILE}; exec "$@"', "up", *self.argv]
            command = [*engine.prefix, *inner]
        else:
            command = self.argv
        self.popen = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        """What `up` printed, without colours (docker-compose v1 colours its log prefixes on a pipe too)."""
        self._log.flush()
        return ANSI_ESCAPE.sub("", self.log_path.read_text(errors="replace"))

    def wait_for(self, pattern: str, timeout: float, what: str) -> re.Match[str]:
        def seen() -> re.Match[str] | None:
            if self.popen.poll() is not None:
                raise GiveUp(f"`{' '.join(self.argv)}` exited {self.popen.returncode}:\n{self.output()}")
            output = self.output()
            # Compose v2 reports a dependency that never got healthy, and then keeps following the logs.
            failed = re.search(r"^dependency failed to start: .*$", output, re.MULTILINE)
            if failed:
                raise GiveUp(failed[0])
            return re.search(pattern, output, re.MULTILINE)

        try:
            found: re.Match[str] = eventually_sync(seen, timeout, interval=1.0, message=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- up output, last lines:\n{self.output()[-6000:]}") from None
        return found

    def interrupt(self, timeout: float = 120) -> int:
        """Ctrl-C: compose stops the containers (SIGTERM, each one's grace period) and exits."""
        if self.popen.poll() is None:
            if self.engine.prefix:
                run([*self.engine.prefix, "sh", "-c", f'kill -INT "$(cat {self.PID_FILE})"'], timeout=30)
            else:
                self.popen.send_signal(signal.SIGINT)
        try:
            return self.popen.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(30)
        self._log.close()


def probe() -> int:
    try:
        version = start_host_engine()
    except EngineUnavailable as exc:
        print(f"no Docker engine can run here: {exc}")
        return 3
    print(f"Docker engine {version} answers")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--probe"]:
        raise SystemExit("usage: python -m tests.harness.docker --probe")
    sys.exit(probe())
