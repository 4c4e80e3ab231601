"""Running the real `relaybot` command in tests: one helper for every subprocess story."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from core.testing.fake_openai import FakeOpenAI

RELAYBOT = str(Path(sys.executable).parent / "relaybot")
OWN_PREFIXES = ("RELAYBOT_", "OPENAI_", "TELEGRAM_", "SLACK_")


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without relaybot's own settings, plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    base.update(env)
    return base


def run_relaybot(
    args: list[str], cwd: Path, stdin: str = "", timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `relaybot ARGS` in `cwd` with a clean environment plus `env`; wait for it."""
    return subprocess.run(
        [RELAYBOT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(**env),
        timeout=timeout,
    )


def run_with_env(
    args: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run `relaybot ARGS` in `cwd` with exactly the environment `env`; wait for it."""
    return subprocess.run(
        [RELAYBOT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def start_relaybot(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    """Start `relaybot ARGS` in `cwd` with a clean environment plus `env`, its standard
    streams piped (text), for a test that talks to it while it runs."""
    return subprocess.Popen(
        [RELAYBOT, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=clean_env(**env),
        text=True,
    )


def endpoint_env(fake: FakeOpenAI, key: str = "sk-test-key") -> dict[str, str]:
    """Settings pointing relaybot at a fake OpenAI server."""
    return {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": fake.base_url}


def free_port() -> int:
    """A TCP port of 127.0.0.1 the OS says is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# What `relaybot run` logs once its HTTP server listens (text and JSON log formats alike).
_LISTENING = re.compile(r"HTTP server on [^\s:\"]+:(\d+)")


def listening_port(log: str) -> int | None:
    """The port a `relaybot run` log says its HTTP server listens on (the latest start's)."""
    found = _LISTENING.findall(log)
    return int(found[-1]) if found else None


def wait_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    deadline: float,
    log: Callable[[], str],
    name: str = "relaybot",
) -> str:
    """Wait until the `relaybot run` process `proc` answers 200 on `url`/readyz; return the
    URL it serves. Its port is read from the process's own log: with port 0 in `url` (the
    OS picks a free one as it binds: no other process can hold it) that is the port it
    bound, and another process answering on a given port (a test worker's relaybot that took
    it between `free_port()` and this one's start) is never taken for this one."""
    parts = urlsplit(url)
    with httpx.Client(timeout=2) as client:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited:\n{log()[-3000:]}")
            bound = listening_port(log())
            if bound is not None and parts.port not in (0, bound):
                raise AssertionError(f"{name} listens on {bound}, not {parts.port}")
            if bound is not None:
                served = parts._replace(netloc=f"{parts.hostname}:{bound}").geturl()
                try:
                    if client.get(served + "/readyz").status_code == 200:
                        return served
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not ready:\n{log()[-3000:]}")
            time.sleep(0.1)  # a process starting up: there is nothing to wait on but time


def run_until_ready(cwd: Path, **env: str) -> str:
    """Start `relaybot run` in `cwd` with `env`, wait until it is ready (every adapter
    started, its platform reached), stop it with SIGTERM (it must exit 0); its log."""
    log_path = cwd / "relaybot.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [RELAYBOT, "run"],
            cwd=cwd,
            env=clean_env(RELAYBOT_HTTP_HOST="127.0.0.1", RELAYBOT_HTTP_PORT="0", **env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(proc, "http://127.0.0.1:0", time.monotonic() + 60, log_path.read_text)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return log_path.read_text()
