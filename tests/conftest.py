"""Shared fixtures: the tiny random model (fast unit tests), the real embedded model (smoke tests), and a real
`transformers serve` process on loopback (HTTP backend tests)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may download


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from cada.models.load import resolve_model

    return resolve_model("tiny-random")


@pytest.fixture(scope="session")
def embedded_model() -> str:
    from cada.models.load import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_generator(tiny_model):
    from cada.models import LocalGenerator

    return LocalGenerator.from_name(tiny_model, show_progress=False)


@pytest.fixture(scope="session")
def spec():
    from cada.spec import load_spec

    return load_spec()


_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve(embedded_model, tmp_path_factory):
    """A real `transformers serve` process on loopback serving the cached embedded model."""
    exe = shutil.which("transformers") or str(Path(sys.executable).parent / "transformers")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([exe, "serve", embedded_model, "--host", "127.0.0.1", "--port", str(port),
                                 "--device", "cpu"], stdout=fh, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited early:\n{log.read_text()[-3000:]}")
            try:
                with _LOOPBACK.open(f"{base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.time() > deadline:
                pytest.fail(f"transformers serve did not come up in 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield {"base_url": f"{base}/v1", "model": embedded_model}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
