"""The console's output closed by its reader: `printf 'a\\nb\\nc\\n' | relaybot console | head -1`.

Seen before: every remaining line was still sent to the model (and billed), each answer
failing with a BrokenPipeError traceback. Now the session ends there, quietly, with exit
code 0, as Unix tools do.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from bots.console import run_console
from core.app import Core
from core.testing.fake_openai import FakeOpenAI
from tests.processes import endpoint_env, start_relaybot


def user_turns(fake: FakeOpenAI) -> list[str]:
    return [str(r["messages"][-1]["content"]) for r in fake.chat_requests()]


def test_closing_the_output_ends_the_session_quietly(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    proc = start_relaybot(["console"], tmp_path, **endpoint_env(endpoint))
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write("a\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "echo: a\n"
        time.sleep(0.5)  # relaybot waits for the next line by now (it looked at its reader)
        proc.stdout.close()  # as `head -1` does once it has its line

        proc.stdin.write("b\nc\n")
        proc.stdin.close()
        code = proc.wait(60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    assert code == 0, err
    assert err == ""
    assert user_turns(endpoint) == ["a"]


class ClosedPipe(io.StringIO):
    """A pipe whose reader has gone: every write fails."""

    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


async def test_a_reader_gone_before_the_first_answer_ends_the_session_after_it(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    await run_console(core, stdin=io.StringIO("a\nb\nc\n"), stdout=ClosedPipe())

    assert user_turns(fake_openai) == ["a"]
