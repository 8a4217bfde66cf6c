"""Reads the deployment files as Docker does (compose through a real compose, Dockerfiles by instruction) and
runs an image's command as a local process with the environment the container would have."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose" / "compose.yaml"
DEPLOYABLES = ("consumer", "api", "publisher")
# What `docker compose` interpolates from the caller's shell; cleared so the checks see the file's defaults.
CLEAN_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}


def compose_command() -> list[str]:
    """A real compose implementation: `docker-compose` (Debian's package) or the `docker compose` plugin.

    Missing, it fails the test under CI (.ci/run installs it) and skips it elsewhere, with how to get it.
    """
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, env=CLEAN_ENV)
        if probe.returncode == 0:
            return ["docker", "compose"]
    message = "no compose implementation: apt-get install -y docker-compose (or the docker compose plugin)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_compose(
    *args: str, env: dict[str, str] | None = None, overrides: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """compose with compose.yaml and then each override file, as `-f` options in that order."""
    files = [option for path in (COMPOSE_FILE, *overrides) for option in ("-f", str(path))]
    return subprocess.run(
        [*compose_command(), *files, *args],
        capture_output=True,
        text=True,
        env={**CLEAN_ENV, **(env or {})},
        cwd=REPO,
        timeout=60,
    )


def compose_config(overrides: tuple[Path, ...] = (), **env: str) -> dict[str, Any]:
    """The compose file (merged with `overrides`) as compose resolves it (anchors merged, ports parsed), its
    variables interpolated from `env` alone."""
    result = run_compose("config", env=env, overrides=overrides)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@dataclass
class Dockerfile:
    """A Dockerfile as its list of instructions (continuations joined, comments dropped)."""

    path: Path
    instructions: list[tuple[str, str]]

    @classmethod
    def of(cls, deployable: str) -> Dockerfile:
        path = REPO / f"Dockerfile.{deployable}"
        instructions: list[tuple[str, str]] = []
        pending = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            pending += line
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip() + " "
                continue
            keyword, _, rest = pending.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
        return cls(path, instructions)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"{self.path.name}: {len(found)} {keyword} instructions"
        return found[0]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for rest in self.all("ENV"):
            for word in shlex.split(rest):
                name, sep, value = word.partition("=")
                assert sep, f"{self.path.name}: ENV {rest!r} is not in KEY=value form"
                values[name] = value
        return values

    def cmd(self) -> list[str]:
        return exec_form(self.one("CMD"), f"{self.path.name} CMD")

    def healthcheck(self) -> list[str] | None:
        """The HEALTHCHECK command, or None for `HEALTHCHECK NONE`."""
        rest = self.one("HEALTHCHECK")
        if rest == "NONE":
            return None
        words = rest.split(" CMD ", 1)
        assert len(words) == 2, f"{self.path.name}: HEALTHCHECK {rest!r} has no CMD"
        return exec_form(words[1], f"{self.path.name} HEALTHCHECK")


def exec_form(text: str, what: str) -> list[str]:
    """The JSON (exec) form, which runs the program itself as the container's process: no shell in between
    to swallow SIGTERM."""
    try:
        argv = json.loads(text)
    except ValueError as exc:
        raise AssertionError(f"{what} is not in exec form (a JSON array): {text!r}") from exc
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), f"{what}: {text!r}"
    return argv


@dataclass
class Container:
    """One compose service as a local process: the image's command and environment, with the addresses that
    only exist inside compose's network replaced by this test's."""

    service: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def run(self, argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run another command in the same environment, as `docker exec` (and a healthcheck) would."""
        return subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)

    def output(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as `docker compose stop` sends it; the exit code."""
        assert self.popen is not None
        self.popen.terminate()
        return self.popen.wait(timeout)

    def close(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


def local_environment(
    image_env: dict[str, str], compose_env: dict[str, str], translate: dict[str, str]
) -> dict[str, str]:
    """The container's environment (image ENV, then compose's), with `translate` applied to the values that
    name places inside the container (the broker host, /data, /app), and `python` found in this virtualenv."""
    env = {**image_env, **{k: str(v) for k, v in compose_env.items()}, **translate}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    env.setdefault("HOME", os.environ.get("HOME", "/root"))
    env.setdefault("LANG", "C.UTF-8")
    return env
