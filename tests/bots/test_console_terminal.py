"""The console on a real terminal: Ctrl-C, long pasted lines, arrow keys, withheld answers.

Seen before: Ctrl-C at the `you>` prompt did nothing until Enter was pressed (the line being
read on asyncio's worker thread, which Python waits for at exit); a pasted line longer than
4095 characters reached the model cut short, and the arrow keys typed escape codes into the
message (the terminal's own line editing, without readline); a flagged answer stayed on the
screen, whole, above "[This answer was withheld ...]".
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import struct
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bots.console import run_console
from core.app import Core
from core.testing.fake_openai import FakeOpenAI
from tests.processes import RELAYBOT, clean_env, endpoint_env


class Terminal:
    """`relaybot console` on a pseudo-terminal of its own, as a person runs it in a shell."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become relaybot, nothing else
            try:
                os.chdir(cwd)
                os.execve(RELAYBOT, [RELAYBOT, "console"], env)
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.exit_code: int | None = None
        self._screen = b""
        self._changed = threading.Condition()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # the terminal is closed: relaybot has exited
                data = b""
            with self._changed:
                self._screen += data
                self._changed.notify_all()
            if not data:
                return

    @property
    def screen(self) -> str:
        """Everything relaybot has written to the terminal so far (and its echo)."""
        with self._changed:
            return self._screen.decode(errors="replace")

    def wait_for(self, text: str, count: int = 1, within: float = 30) -> None:
        """Wait until `text` has been written to the terminal `count` times."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: self._screen.count(text.encode()) >= count, timeout=within
            ):
                raise AssertionError(f"{text!r} never shown; the screen:\n{self.screen[-2000:]}")

    def type(self, keys: bytes) -> None:
        """Type (or paste) `keys`."""
        while keys:
            _, ready, _ = select.select([], [self.fd], [], 10)
            assert ready, "the terminal takes no more input"
            keys = keys[os.write(self.fd, keys) :]

    def wait_exit(self, within: float) -> int | None:
        """relaybot's exit code, or None when it has not exited within `within` seconds."""
        deadline = time.monotonic() + within
        while self.exit_code is None and time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
            else:
                time.sleep(0.05)
        return self.exit_code

    def close(self) -> None:
        if self.wait_exit(0) is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        self._pump.join(5)
        os.close(self.fd)


@pytest.fixture
def terminal(endpoint: FakeOpenAI, tmp_path: Path) -> Iterator[Terminal]:
    """relaybot's console on a terminal, at its `you>` prompt, talking to the fake server."""
    env = clean_env(**endpoint_env(endpoint), TERM="xterm", LC_ALL="C.UTF-8")
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    term = Terminal(tmp_path, env)
    try:
        term.wait_for("you> ")
        yield term
    finally:
        term.close()


def last_user_turn(endpoint: FakeOpenAI) -> str:
    return str(endpoint.chat_requests()[-1]["messages"][-1]["content"])


def test_ctrl_c_at_the_prompt_ends_the_console_at_once(terminal: Terminal) -> None:
    terminal.type(b"\x03")

    assert terminal.wait_exit(within=10) == 130, terminal.screen
    # The terminal is left as it was found: what is typed next is echoed, line by line.
    modes = termios.tcgetattr(terminal.fd)[3]
    assert modes & termios.ECHO and modes & termios.ICANON


def test_a_long_pasted_line_reaches_the_model_whole(
    terminal: Terminal, endpoint: FakeOpenAI
) -> None:
    line = "word " * 1200 + "END"  # 6,003 characters, more than a terminal's line holds

    terminal.type(line.encode() + b"\n")

    endpoint.wait_sync("/chat/completions", within=30)
    assert last_user_turn(endpoint) == line
    terminal.wait_for("you> ", count=2)
    terminal.type(b"\x04")  # Ctrl-D
    assert terminal.wait_exit(within=30) == 0, terminal.screen


def test_the_arrow_keys_edit_the_line_and_bring_back_the_last_one(
    terminal: Terminal, endpoint: FakeOpenAI
) -> None:
    left, up = b"\x1b[D", b"\x1b[A"

    terminal.type(b"abc" + left + b"def\n")  # "def" typed before the "c"
    endpoint.wait_sync("/chat/completions", within=30)
    assert last_user_turn(endpoint) == "abdefc"
    terminal.wait_for("echo: abdefc")

    terminal.type(up + b"!\n")  # the last line again, with one more character
    endpoint.wait_sync("/chat/completions", count=2, within=30)
    assert last_user_turn(endpoint) == "abdefc!"
    assert "\x1b[D" not in str(endpoint.chat_requests())


class EchoingTerminal(io.StringIO):
    """A terminal's keyboard: reading a line echoes it on the screen, as typing does."""

    def __init__(self, lines: str, screen: io.StringIO) -> None:
        super().__init__(lines)
        self._screen = screen

    def isatty(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> str:
        line = super().readline(-1 if size is None else size)
        self._screen.write(line)
        return line


class Screen(io.StringIO):
    """What a terminal `columns` wide shows of what was written to it: lines wrap at the
    right edge, the few escape codes an answer's erasing uses are obeyed, and so are the
    vertical tab, form feed and ESC D (index), which move the cursor down a row."""

    def __init__(self, columns: int) -> None:
        super().__init__()
        self.columns = columns

    def isatty(self) -> bool:
        return True

    def rows(self) -> list[str]:
        grid: list[list[str]] = [[]]
        row = col = 0
        for token in re.findall(r"\x1b\[\d*[A-Za-z]|\x1bD|.|\n", self.getvalue(), re.DOTALL):
            if token == "\n":
                row, col = row + 1, 0
            elif token in ("\x0b", "\x0c", "\x1bD"):  # down a row, in the same column
                row += 1
            elif token == "\r":
                col = 0
            elif token.startswith("\x1b["):
                count, command = int(token[2:-1] or 1), token[-1]
                if command == "A":
                    row = max(0, row - count)
                elif command == "J":  # clear from the cursor to the end of the screen
                    grid[row] = grid[row][:col]
                    del grid[row + 1 :]
                else:
                    raise AssertionError(f"an escape code this screen does not know: {token!r}")
            else:
                if col == self.columns:  # the line was full: this character wraps
                    row, col = row + 1, 0
                while len(grid) <= row:
                    grid.append([])
                cells = grid[row]
                cells.extend(" " * (col + 1 - len(cells)))
                cells[col] = token
                col += 1
            while len(grid) <= row:
                grid.append([])
        return ["".join(cells).rstrip() for cells in grid]


async def test_a_withheld_answer_is_erased_from_the_terminal(
    core: Core, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "24")
    fake_openai.queue_reply(
        "Here is FLAGME content that wraps over several rows of this narrow terminal.\n\n"
        "And a second paragraph of it."
    )
    screen = Screen(columns=24)

    keyboard = EchoingTerminal("tell me something\nhello\n", screen)
    await run_console(core, stdin=keyboard, stdout=screen)

    rows = screen.rows()
    assert "FLAGME" in screen.getvalue()  # it was streamed as it came ...
    assert not any("FLAGME" in row or "paragraph" in row for row in rows), rows  # ... and erased
    start = rows.index("you> tell me something")
    assert rows[start + 1].startswith("[This answer was")
    assert rows[-3:] == ["you> hello", "echo: hello", "you>"]


@pytest.mark.parametrize("mover", ["\x0b", "\x0c", "\x1bD"], ids=["VT", "FF", "IND"])
async def test_a_withheld_answer_moving_the_cursor_down_is_erased_whole(
    core: Core, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, mover: str
) -> None:
    """Seen before: a vertical tab, form feed or ESC D in the answer moved the cursor down
    rows the erase did not count, so it cleared too low and the flagged text stayed."""
    monkeypatch.setenv("COLUMNS", "24")
    fake_openai.queue_reply("Here is FLAGME content" + mover * 3 + "done")
    screen = Screen(columns=24)

    await run_console(core, stdin=EchoingTerminal("tell me\nhello\n", screen), stdout=screen)

    rows = screen.rows()
    assert not any("FLAGME" in row for row in rows), rows
    start = rows.index("you> tell me")
    assert rows[start + 1].startswith("[This answer was")
    assert rows[-3:] == ["you> hello", "echo: hello", "you>"]
