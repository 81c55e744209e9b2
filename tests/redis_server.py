"""Start a private redis-server on a free loopback port for one test, and stop it after."""

import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from typing import Iterator

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    """Return a loopback TCP port that nothing listens on at the moment of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@contextmanager
def redis_server() -> Iterator[str]:
    """Run redis-server without persistence on a free port; yield its URL. Skip when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://{HOST}:{port}/0"
    try:
        _wait_until_up(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_until_up(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    client = Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        while True:
            try:
                client.ping()
                return
            except RedisConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {url} did not start (exit code {process.poll()})")
                time.sleep(0.05)
    finally:
        client.close()
