"""A real TensorBoard server on a free local port for the tests that check what TensorBoard serves."""

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tensorboard_server(logdir: Path, *options: str) -> Iterator[str]:
    """``python -m tensorboard.main --logdir logdir [options]`` on 127.0.0.1, reloading every second; yields its
    base URL and stops it afterwards."""
    port = _free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), *options, "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def get_json(url: str, body: dict | None = None) -> Any:
    """The JSON a TensorBoard route answers (a POST with ``body``, as the HParams plugin expects)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"} if body is not None else {}
    with urlopen(Request(url, data=data, headers=headers), timeout=5) as response:
        return json.loads(response.read())
