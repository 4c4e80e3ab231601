"""Terminal adapter: lines from stdin in, answers on stdout (streamed on a terminal)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import mimetypes
import os
import queue
import re
import select
import shlex
import shutil
import sys
import tempfile
import threading
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from core.app import Core
from core.commands import COMMANDS, HELP_TEXT, parse_command
from core.db.database import unavailable
from core.errors import BadInput
from core.ports import ReplySink
from core.types import (
    FORGOTTEN,
    Attachment,
    AttachmentKind,
    ChatRef,
    Fetch,
    IncomingMessage,
    Reply,
    ReplyKind,
    Sender,
)

PLATFORM = "console"
log = logging.getLogger("relaybot.console")
# A typed line the database could not store (its file locked by another program past the
# busy timeout, a PostgreSQL server down): said on one line, and the next lines are read.
NOT_STORED = (
    "! The database is busy or unreachable, so your message was not stored. "
    "Please send it again.\n"
)


# The console's own forms: files are given by path, and there are no groups.
_FORMS = {
    "edit": "edit an image file: /edit PATH INSTRUCTION",
    "voice": "transcribe an audio file and answer it: /voice PATH",
    "translate": "translate an audio file to English text: /translate PATH",
    "voicemode": None,
}
CONSOLE_HELP = (
    "I'm relaybot. Send me a message, or an audio file with /voice PATH, and I'll answer.\n\n"
    + "\n".join(
        f"/{name} - {text}" for name, text in {**COMMANDS, **_FORMS}.items() if text is not None
    )
)


def _reader(path: Path) -> Fetch:
    async def fetch() -> bytes:
        try:
            return await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            # Deleted or moved since it was sent (a message resumed after a restart).
            reason = exc.strerror or type(exc).__name__
            raise BadInput(
                f"attachment unreadable: {reason}",
                user_message=f"I can no longer read {path} ({reason}). Please send it again.",
            ) from None

    return fetch


def _file_attachment(path: Path, kind: AttachmentKind) -> Attachment:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Attachment(
        kind=kind,
        mime=mime,
        size=path.stat().st_size,
        filename=path.name,
        fetch=_reader(path),
        ref=str(path.resolve()),
    )


def _path_argument(text: str) -> tuple[str, str]:
    """The path a command's argument starts with, as a shell would read it ('my voice.ogg',
    my\\ voice.ogg), and the text after it. What a shell cannot read (an apostrophe in
    an unquoted name) is split at the first space."""
    stream = io.StringIO(text)
    lexer = shlex.shlex(stream, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        path = lexer.get_token()
    except ValueError:  # no closing quotation
        path, _, after = text.partition(" ")
        return path, after.strip()
    after = stream.read()  # what the lexer has not read: the rest, as typed
    return path or "", after.strip()


def _audio_path(text: str) -> Path:
    """The audio file of /voice and /translate: the argument as a shell reads it, or as typed
    (an unquoted path with spaces in it, a name with an apostrophe)."""
    path, after = _path_argument(text)
    typed = Path(text).expanduser()
    # More than one word: a path with spaces typed without quotes, taken as typed.
    read = typed if after else Path(path).expanduser()
    return typed if typed.is_file() and not read.is_file() else read


def to_incoming(line: str, chat: str, user: str) -> IncomingMessage | str:
    """A console line as a neutral message, or a one-line error for the person."""
    text = line.rstrip("\n")
    attachments: tuple[Attachment, ...] = ()
    head, _, rest = text.strip().partition(" ")
    head = head.lower()
    if head in ("/voice", "/translate"):
        if not rest.strip():
            return f"Usage: {head} PATH_TO_AUDIO_FILE"
        path = _audio_path(rest.strip())
        if not path.is_file():
            return f"No such file: {path}"
        attachments = (_file_attachment(path, AttachmentKind.AUDIO),)
        text = "/translate" if head == "/translate" else ""
    elif head == "/edit":
        path_text, instruction = _path_argument(rest.strip())
        if not path_text:
            return "Usage: /edit PATH_TO_IMAGE INSTRUCTION"
        path = Path(path_text).expanduser()
        if not path.is_file():
            return f"No such file: {path}"
        attachments = (_file_attachment(path, AttachmentKind.IMAGE),)
        text = f"/edit {instruction}"
    return IncomingMessage(
        chat=ChatRef(PLATFORM, chat),
        sender=Sender(id=user, name=user),
        event_key=f"{PLATFORM}:{uuid.uuid4()}",
        text=text,
        attachments=attachments,
    )


def _makes_a_picture(text: str) -> bool:
    """/image PROMPT and /edit INSTRUCTION: the model makes a picture to save."""
    command = parse_command(text)
    return command is not None and command[0] in ("image", "edit") and bool(command[1])


class ConsoleRestorer:
    """Resumes this console chat's unfinished messages into the current terminal."""

    def __init__(self, chat: str, sink: ReplySink) -> None:
        self._chat = chat
        self._sink = sink

    def restore(self, msg: IncomingMessage) -> tuple[IncomingMessage, ReplySink] | None:
        """The stored message with its files readable again; other chats stay queued."""
        if msg.chat.chat_id != self._chat:
            return None
        files = tuple(
            replace(a, fetch=_reader(Path(a.ref))) if a.ref else a for a in msg.attachments
        )
        return replace(msg, attachments=files), self._sink


class ConsoleOutput:
    """Standard output as the console writes to it. When whoever reads it goes away
    (`relaybot console | head -1`) the session ends quietly, as Unix tools do: nothing more
    is written, read or sent to the model, and no BrokenPipeError is shown."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.reader_gone = False

    def isatty(self) -> bool:
        """True on a terminal."""
        return self._out.isatty()

    def write(self, text: str) -> None:
        """Write, unless nobody reads any more."""
        if self.reader_gone:
            return
        try:
            self._out.write(text)
        except BrokenPipeError:
            self._gone()

    def flush(self) -> None:
        """Flush, unless nobody reads any more."""
        if self.reader_gone:
            return
        try:
            self._out.flush()
        except BrokenPipeError:
            self._gone()

    def check_reader(self) -> bool:
        """True when the pipe's reader has already closed it (seen before the next line is
        sent to the model, not only when its answer cannot be written)."""
        if not self.reader_gone and hasattr(select, "poll"):
            try:
                poller = select.poll()
                poller.register(self._out.fileno(), select.POLLOUT)
                events = poller.poll(0)
            except (OSError, ValueError):  # not a file (a test's buffer) or closed
                events = []
            if any(event & select.POLLERR for _, event in events):
                self._gone()
        return self.reader_gone

    def _gone(self) -> None:
        self.reader_gone = True
        # What is still buffered goes nowhere, so flushing it at exit raises nothing.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._out.fileno())
            finally:
                os.close(devnull)


# What the model or the person may write but the terminal must not be given: the control
# characters (category Cc) but newline and tab, since ESC starts sequences that set the
# clipboard, show a link to somewhere else than its text, clear the screen or move the cursor,
# and "\r", VT and FF move it too (an erase would miss rows); and the bidi overrides and
# isolates, which show text in another order than it is in.
_UNPRINTABLE = dict.fromkeys(
    code
    for code in [*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
    if chr(code) not in "\n\t"
)


def _printable(text: str) -> str:
    """`text` as it may be shown on the terminal: without the characters of _UNPRINTABLE."""
    return text.translate(_UNPRINTABLE)


def _columns_of(char: str) -> int:
    """How many terminal columns a character takes: 2 for wide ones (CJK, most emoji), none
    for combining marks and control characters."""
    if unicodedata.combining(char) or unicodedata.category(char) in ("Cc", "Cf", "Me", "Mn"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def screen_rows(text: str, columns: int) -> int:
    """How many terminal rows `text` (as _printable leaves it) takes when printed from the
    start of a row, long lines wrapping at `columns` (a wide character that does not fit goes
    to the next row); the cursor is on the last of them."""
    columns = max(columns, 2)
    rows, column = 1, 0
    for char in text:
        if char == "\n":
            rows, column = rows + 1, 0
        elif char == "\t":  # to the next tab stop, never past the right edge
            column = min((column // 8 + 1) * 8, max(column, columns - 1))
        elif width := _columns_of(char):
            if column + width > columns:
                rows, column = rows + 1, 0
            column += width
    return rows


class ConsoleStream:
    """Prints deltas as they come on a terminal; buffers and prints once when piped."""

    def __init__(self, out: ConsoleOutput, live: bool) -> None:
        self._out = out
        self._live = live
        self._parts: list[str] = []
        self._retracted = False

    async def append(self, delta: str) -> None:
        """Add text to the answer (what is kept of it is what is shown, so that an erase
        counts the rows it took)."""
        delta = _printable(delta)
        self._parts.append(delta)
        if self._live and not self._retracted:
            self._out.write(delta)
            self._out.flush()

    async def retract(self, notice: str) -> None:
        """Drop the answer and show the notice instead: on a terminal what was printed of it
        is erased first (piped, nothing of it was printed)."""
        if self._live and self._parts:
            columns = shutil.get_terminal_size().columns
            up = screen_rows("".join(self._parts), columns) - 1
            # Back to the row the answer started on, and clear from there down.
            self._out.write("\r" + (f"\x1b[{up}A" if up else "") + "\x1b[J")
        self._parts = []
        self._out.write(f"[{_printable(notice)}]\n")
        self._out.flush()
        self._retracted = True

    def finish(self) -> None:
        """End the answer with a newline (printing it now when buffered)."""
        if self._retracted:
            return
        text = "".join(self._parts)
        if self._live:
            self._out.write("\n")
        elif text:
            self._out.write(text + "\n")
        self._out.flush()


def image_folder(chat: str) -> str:
    """The folder (in RELAYBOT_IMAGE_DIR) of a console chat's saved images: its name made
    safe for a file name, and a hash of the exact name, so that no two chats share one ("a"
    and "a-", "my chat" and "my_chat", "A" and "a" on a case-insensitive disk)."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", chat).strip("_-")[:40] or "chat"
    return f"{readable}-{hashlib.sha256(chat.encode()).hexdigest()[:12]}"


IMAGE_DIR_FIX = "set RELAYBOT_IMAGE_DIR to a folder this user can write"


def image_dir_problem(folder: Path, *, create: bool) -> str | None:
    """Why pictures cannot be saved in `folder`, or None when they can. With `create` the
    folder is made and a file written in it (what saving does); without, nothing is changed:
    the folder, or the nearest existing folder it would be made in, must be writable."""
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".relaybot-write-test-"):
                pass
        except OSError as exc:
            return f"{exc.strerror or type(exc).__name__}: {exc.filename or folder}"
        return None
    here = folder
    while not here.exists() and here.parent != here:
        here = here.parent  # not there yet: saving would make it in its parent
    if not here.is_dir():
        return f"{here} is not a folder"
    if not os.access(here, os.W_OK | os.X_OK):
        return f"{here} cannot be written by this user"
    return None


def cannot_save_images(image_dir: str, problem: str) -> str:
    """The console's line for a RELAYBOT_IMAGE_DIR pictures cannot be saved in."""
    return f"I cannot save images: RELAYBOT_IMAGE_DIR={image_dir} ({problem}); {IMAGE_DIR_FIX}"


class ConsoleSink:
    """Reply sink writing to a text stream; images go to files whose path is printed."""

    def __init__(
        self, out: ConsoleOutput, image_dir: Path, live: bool, chat: str = "default"
    ) -> None:
        self._out = out
        self._live = live
        self._configured_dir = image_dir
        # Each chat saves its images in a folder of its own, which /forget deletes.
        self._image_dir = image_dir / image_folder(chat)

    async def image_problem(self) -> str | None:
        """The line to print instead of asking for a picture that could not be saved (the
        model would make it, and bill it, for nothing), or None when it can be."""
        problem = await asyncio.to_thread(image_dir_problem, self._image_dir, create=True)
        return None if problem is None else cannot_save_images(str(self._configured_dir), problem)

    def _delete_images(self) -> None:
        shutil.rmtree(self._image_dir, ignore_errors=True)

    async def send(self, reply: Reply) -> None:
        """Print a complete reply."""
        if FORGOTTEN in reply.extras:
            await asyncio.to_thread(self._delete_images)
        if reply.image is not None:
            suffix = Path(reply.image_name).suffix or ".png"
            path = self._image_dir / f"{uuid.uuid4().hex[:12]}{suffix}"
            try:  # the folder was checked before the picture was asked for; it may change
                await asyncio.to_thread(self._image_dir.mkdir, parents=True, exist_ok=True)
                await asyncio.to_thread(path.write_bytes, reply.image)
            except OSError as exc:
                problem = f"{exc.strerror or type(exc).__name__}: {exc.filename or path}"
                self._out.write(
                    f"! The image was made but cannot be saved: RELAYBOT_IMAGE_DIR="
                    f"{self._configured_dir} ({problem}); {IMAGE_DIR_FIX}\n"
                )
            else:
                self._out.write(f"Image saved to {path.resolve()}\n")
        elif reply.kind is ReplyKind.ERROR:
            self._out.write(f"! {_printable(reply.text)}\n")
        elif reply.kind is ReplyKind.TRANSCRIPT:
            self._out.write(f"Transcript: {_printable(reply.text)}\n")
        elif reply.text == HELP_TEXT:  # the platforms' help, in the console's forms
            self._out.write(CONSOLE_HELP + "\n")
        else:
            self._out.write(_printable(reply.text) + "\n")
        self._out.flush()

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[ConsoleStream]:
        """A streamed answer."""
        stream = ConsoleStream(self._out, self._live)
        try:
            yield stream
        finally:
            stream.finish()

    async def typing(self) -> None:
        """Nothing to show on a terminal."""

    async def chat_admin(self, sender_id: str) -> bool | None:
        """A console chat has no admins of its own (and is never a group)."""
        return None


_Ask = tuple[asyncio.AbstractEventLoop, asyncio.Future[str]]


class LineReader:
    """Reads input one line at a time, when asked, on a daemon thread of its own: Ctrl-C ends
    the console at once instead of waiting for a line nobody will type (asyncio.to_thread's
    threads are waited for at exit)."""

    def __init__(self, read: Callable[[], str]) -> None:
        self._read = read
        # Each ask: the loop to answer in, and the future it waits on.
        self._asks: queue.SimpleQueue[_Ask] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ended = False

    async def next_line(self) -> str:
        """The next line with its newline, or "" at the end of input."""
        if self._ended:
            return ""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name="relaybot-console-input", daemon=True
            )
            self._thread.start()
        self._asks.put((loop, answer))
        line = await answer
        self._ended = not line
        return line

    def _serve(self) -> None:
        while True:
            loop, answer = self._asks.get()
            line, error = "", None
            try:
                line = self._read()
            except EOFError:
                pass
            except Exception as exc:
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, answer, line, error)
            except RuntimeError:  # the console has ended: nobody waits for it
                return
            if not line:
                return


def _settle(answer: asyncio.Future[str], line: str, error: Exception | None) -> None:
    if answer.done():  # given up on (Ctrl-C)
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(line)


def _line_editor(prompt: str) -> Callable[[], str] | None:
    """On a terminal: read with readline, so a long pasted line arrives whole (the terminal's
    own line is cut at 4095 characters) and the arrow keys and history work. None where
    readline is missing."""
    try:
        import readline  # noqa: F401  (imported, input() edits lines with it)
    except ImportError:
        return None

    def read() -> str:
        return input(prompt) + "\n"

    return read


class _TerminalState:
    """The terminal's settings at start, put back at the end: Ctrl-C may come while
    readline has the terminal in its own mode (no echo)."""

    def __init__(self, fd: int, saved: list[Any]) -> None:
        self._fd = fd
        self._saved = saved

    def restore(self) -> None:
        import termios

        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)


def _terminal_state(src: TextIO) -> _TerminalState | None:
    try:
        import termios

        fd = src.fileno()
        return _TerminalState(fd, termios.tcgetattr(fd))
    except (ImportError, OSError, ValueError):
        return None


async def _handle(core: Core, msg: IncomingMessage, sink: ReplySink, out: ConsoleOutput) -> None:
    """Answer one typed line; a database that cannot store it now does not end the console."""
    try:
        job = await core.service.submit(msg, sink)
    except Exception as err:
        if not unavailable(err):
            raise
        log.warning(
            "a typed line was not stored: the database is unavailable (%s)", type(err).__name__
        )
        out.write(NOT_STORED)
        out.flush()
        return
    if job is None:
        return
    try:
        await asyncio.shield(job)
    except Exception as err:
        # Stored, and the person was told what went wrong; only closing its event failed
        # (the next start takes it on again).
        if not unavailable(err):
            raise
        log.warning(
            "a message's end was not stored: the database is unavailable (%s)", type(err).__name__
        )


async def run_console(
    core: Core,
    *,
    chat: str = "default",
    user: str = "you",
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> None:
    """Chat on the terminal until end of input (or until nobody reads the output)."""
    src = stdin or sys.stdin
    out = ConsoleOutput(stdout or sys.stdout)
    live = out.isatty()
    interactive = src.isatty() and live
    prompt = "you> " if interactive else ""
    editor = None
    if src is sys.stdin and src.isatty() and stdout in (None, sys.stdout):
        editor = _line_editor(prompt)
    lines = LineReader(editor or src.readline)
    terminal = _terminal_state(src) if editor else None
    sink = ConsoleSink(out, Path(core.settings.image_dir), live=live, chat=chat)
    try:
        if interactive:
            out.write(f"relaybot console, chat {chat!r}. /help for commands, Ctrl-D to quit.\n")
        # Answer what a previous run of this chat left unanswered (a crash, a kill -9).
        await core.service.resume(
            {PLATFORM: ConsoleRestorer(chat, sink)},
            everything=core.engine.dialect.name == "sqlite",
        )
        while not out.check_reader():
            if interactive and editor is None:
                out.write(prompt)
                out.flush()
            try:
                line = await lines.next_line()
            except asyncio.CancelledError:
                if interactive:  # Ctrl-C at the prompt: the shell's prompt on a line of its own
                    out.write("\n")
                    out.flush()
                raise
            if not line:
                break
            # Looked at again once the line came: the reader may have gone while we waited
            # for it (`... | head -1` closes the pipe after the first answer's line).
            if out.check_reader():
                break
            if not line.strip():
                continue
            msg = to_incoming(line, chat, user)
            if not isinstance(msg, str) and _makes_a_picture(msg.text):
                msg = await sink.image_problem() or msg
            if isinstance(msg, str):
                out.write(f"! {_printable(msg)}\n")
                out.flush()
                continue
            await _handle(core, msg, sink, out)
        await core.service.drain()
    finally:
        if terminal is not None:
            terminal.restore()
