"""The child processes the demo starts (a redis-server, the worker), and how it stops them."""

from __future__ import annotations

import subprocess

POLL_SECONDS = 0.1
STOP_SECONDS = 10.0


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still there after a while."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
