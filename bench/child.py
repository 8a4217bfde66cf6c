"""A deployable (`python -m consumer|publisher`) run as a child process, with its output in log files."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parent.parent

# A graceful consumer stop commits and acks what it holds; seconds, not minutes.
STOP_TIMEOUT = 15.0


def _open_log(path: Path) -> BinaryIO:
    return path.open("wb")


class Child:
    """One child process. Output goes to files, not pipes: a pipe nobody reads while we measure could fill
    up and stall the very process being timed."""

    def __init__(self, module: str, process: asyncio.subprocess.Process, stdout: Path, stderr: Path) -> None:
        self.module = module
        self.process = process
        self.stdout_path = stdout
        self.stderr_path = stderr

    @classmethod
    async def start(cls, module: str, args: list[str], env: dict[str, str], logs: Path, tag: str) -> Child:
        stdout_path = logs / f"{tag}-{module}.out"
        stderr_path = logs / f"{tag}-{module}.err"
        stdout, stderr = _open_log(stdout_path), _open_log(stderr_path)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                *args,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        finally:
            # The child holds its own descriptors now.
            stdout.close()
            stderr.close()
        return cls(module, process, stdout_path, stderr_path)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self, timeout: float) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code (negative: a signal)."""
        if self.process.returncode is None:
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.kill()
            return await self.process.wait()

    def kill(self) -> None:
        if self.process.returncode is None:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])
