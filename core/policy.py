"""Admission and the accounting commands: access, rate limits, admin rights and budgets.

`Policy.admit` runs before anything else is done for a message, so a refused request never
reaches a model. The order: allow-lists, the rate limit, admin-only commands, then budgets
(only for requests that call a paid model, estimated before the call).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from core.access import Access
from core.accounting import Accounting, Row, Summary, budget_chat, user_key
from core.budgets import PERIOD_WORDS, PERIODS, SCOPES, Budgets, describe
from core.commands import changes_the_chat
from core.config import Settings
from core.db.models import utcnow
from core.db.store import ChatSettings, Store
from core.errors import BadInput, RelaybotError
from core.ports import ReplySink
from core.pricing import PriceTable, money
from core.privacy import forget_chat
from core.ratelimit import RateLimiter
from core.tokens import PER_MESSAGE_TOKENS, PRIMING_TOKENS, counter_for
from core.types import (
    FORGOTTEN,
    PLATFORMS,
    THREADLESS_PLATFORMS,
    AttachmentKind,
    IncomingMessage,
    Reply,
    ReplyKind,
)

log = logging.getLogger("relaybot.policy")

# Commands that call a paid model; everything else (help, usage, forget, ...) is free.
PAID_COMMANDS = frozenset({"image", "edit", "translate", "retry"})
POLICY_COMMANDS = frozenset({"usage", "budget", "forget"})
_PERIOD_NAMES = {"day": "day", "daily": "day", "month": "month", "monthly": "month"}
_TOP = 10
# What /forget keeps of a chat's spend (core.privacy): budgets hold whatever is forgotten.
_SPEND_KEPT = (
    "Its usage is kept without naming anyone, but what it cost still counts toward this "
    "day's and month's budgets."
)
BUDGET_USAGE = (
    "Usage: /budget user PLATFORM:ID | chat PLATFORM:CHAT | chat here | global, then day or "
    "month, then AMOUNT, off or default (AMOUNT in dollars; 0 = no access, off = no limit; "
    "an ID without PLATFORM: is one of this platform)"
)
# The platforms relaybot talks on, as it names them (in lowercase, as RELAYBOT_ADMINS and the
# allow-lists take them): a budget or usage naming another one (`telegarm:5`) is a typo.
_USAGE_USAGE = "Usage: /usage PLATFORM:USER_ID"
_GLOBAL_USAGE = (
    "The bot's budget takes no name: /budget global day|month AMOUNT|off|default "
    "(one person's or one chat's: /budget user ID ..., /budget chat ID ...)"
)


class AccessDenied(RelaybotError):
    """The sender is not on the allow-list."""

    user_message = "Sorry, this bot is private. Ask its operator to let you in."


class AdminOnly(RelaybotError):
    """An admin command from someone who is not an admin."""

    user_message = "Sorry, only the bot's admins can do that."


class AdminCheckFailed(RelaybotError):
    """The platform can tell who administers a group, but asking it failed: a group-wide
    change is refused (not let through) until it can be asked again."""

    user_message = (
        "I couldn't check whether you're one of this group's admins. Please try again in a moment."
    )


class SlowDown(RelaybotError):
    """The sender passed their requests-per-minute limit."""

    user_message = "You're sending messages too fast. Please slow down."


def _named(given: str, here: str, usage: str) -> str:
    """A person or chat named PLATFORM:ID, with the platform as relaybot stores it: in
    lowercase (`Console:you` is console:you, as in RELAYBOT_ADMINS), the ID as written.

    A platform relaybot does not run on is refused: stored as typed, a budget set for it
    was confirmed and never applied. `here` (the platform the command came on) is known;
    `usage`: what a name without a platform or an ID is told.
    """
    platform, _, ident = given.partition(":")
    platform = platform.lower()
    if not platform or not ident:
        raise BadInput("no platform or ID", user_message=usage)
    if platform not in PLATFORMS and platform != here:
        forms = [f"{p}:ID" for p in PLATFORMS]
        raise BadInput(
            "unknown platform",
            user_message=f"There is no platform {platform}: name people and chats as "
            f"{', '.join(forms[:-1])} or {forms[-1]}.",
        )
    return f"{platform}:{ident}"


def _is_admin_command(name: str, args: str) -> bool:
    if name == "model":
        return bool(args)
    if name == "budget":
        return bool(args) and args.lower() not in ("show", "me")
    if name == "usage":
        return bool(args) and args.lower() not in ("me",)
    return False


class Policy:
    """Everything that decides whether, and at what cost, a request may go ahead."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.prices = PriceTable.from_config(settings.prices)
        self.access = Access(settings)
        self.accounting = Accounting(store.engine)
        self.budgets = Budgets(settings, store)
        self.limiter = RateLimiter(store.engine, settings.rate_limit_per_minute)

    # -- admission ------------------------------------------------------------------------
    async def admit(
        self,
        msg: IncomingMessage,
        command: tuple[str, str] | None,
        chat_settings: Callable[[], Awaitable[ChatSettings]] | None = None,
        chat_admin: Callable[[], Awaitable[bool | None]] | None = None,
    ) -> None:
        """Raise a RelaybotError (with one polite line) when this message must not go ahead.

        `chat_settings`: the chat's settings as the caller already has them (their model
        prices the budgets' estimate); read from the store otherwise. `chat_admin`: asks the
        platform whether the sender administers the (group) chat: None where the platform
        cannot tell (members are then trusted alike); a platform that can tell but failed to
        answer raises (`AdminCheckFailed`), so the change is refused.
        """
        platform, sender = msg.chat.platform, msg.sender.id
        if not self.access.allows(msg):
            log.info("message from a user not on the allow-list", extra={"chat": msg.chat.key})
            raise AccessDenied("not allowed")
        wait = await self.limiter.hit(f"user:{user_key(platform, sender)}")
        if wait is not None:
            limit = self.settings.rate_limit_per_minute
            raise SlowDown(
                "rate limited",
                user_message=(
                    f"Slow down a little: you can send {limit} "
                    f"message{'' if limit == 1 else 's'} a minute. "
                    f"Try again in about {wait:.0f} s."
                ),
            )
        name, args = command if command is not None else ("", "")
        admin_only = command is not None and _is_admin_command(name, args)
        if name == "model" and not self.access.admins:
            # A bot without configured admins keeps letting people pick their chat's model;
            # budgets and other people's usage always need an admin.
            admin_only = False
        if admin_only and not self.access.is_admin(platform, sender):
            raise AdminOnly(f"/{name} is admin-only")
        if (
            chat_admin is not None
            and not msg.is_direct
            and changes_the_chat(name, args)
            and not self.access.is_admin(platform, sender)
            and await chat_admin() is False
        ):
            # A group's prompt, history and voice mode are everyone's: a member who is not
            # one of its admins (as the platform says) cannot change them for all.
            raise AdminOnly(
                f"/{name} in a group by a member who is not its admin",
                user_message=f"In a group only its admins can use /{name}: it changes the "
                "conversation for everyone.",
            )
        if command is None or name in PAID_COMMANDS:
            await self.budgets.check(msg, lambda: self.estimate(msg, name, chat_settings))

    async def estimate(
        self,
        msg: IncomingMessage,
        command: str,
        chat_settings: Callable[[], Awaitable[ChatSettings]] | None = None,
    ) -> float:
        """What this request will cost at least: its own text in, a full-length reply out.

        History is not counted (it is only known after the chat's lock is taken), so this is
        a floor, not a ceiling; it keeps a nearly spent budget from starting a dear request.
        """
        settings = self.settings
        audio = next((a for a in msg.attachments if a.kind is AttachmentKind.AUDIO), None)
        if command in ("image", "edit"):
            return self.prices.image_estimate(
                settings.image_model, settings.image_size, settings.image_quality
            )
        total = 0.0
        if audio is not None and audio.duration_seconds:
            model = (
                settings.translate_model if command == "translate" else settings.transcribe_model
            )
            total += self.prices.audio_cost(model, audio.duration_seconds)
        if command == "translate":
            return total
        if chat_settings is None:
            chat = await self.store.chat_settings(msg.chat.key, msg.chat.parent_key)
        else:
            chat = await chat_settings()
        model = chat.model or settings.chat_model
        prompt = PRIMING_TOKENS + 2 * PER_MESSAGE_TOKENS + counter_for(model).count(msg.text)
        total += self.prices.tokens_cost(model, prompt, settings.reply_tokens)
        return total

    def cost(
        self,
        model: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cached_tokens: int = 0,
        audio_tokens: int = 0,
        audio_seconds: float = 0.0,
        images: int = 0,
        image_quality: str | None = None,
        image_size: str | None = None,
        image_tokens: int = 0,
    ) -> float:
        """USD for one recorded model call; images at the quality and size given (what the
        endpoint says it made), else at the configured ones; `image_tokens`: an edit's input
        picture, at the model's image input price."""
        return self.prices.cost(
            model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached_tokens=cached_tokens,
            audio_tokens=audio_tokens,
            audio_seconds=audio_seconds,
            images=images,
            image_size=image_size or self.settings.image_size,
            image_quality=image_quality or self.settings.image_quality,
            image_tokens=image_tokens,
        )

    # -- commands -------------------------------------------------------------------------
    async def command(self, name: str, args: str, msg: IncomingMessage, sink: ReplySink) -> None:
        """/usage, /budget and /forget (admin rights were checked in `admit`)."""
        if name == "usage":
            text = await self._usage(args, msg)
        elif name == "budget":
            text = await self._budget(args, msg)
        elif name == "forget":
            # Said at a chat's top level (a Slack slash command can only be), /forget takes
            # the chat's threads too: a direct chat's are its person's (a Slack DM's), a
            # group's forum topics are the group's, whose admin it takes to say it there.
            chat = msg.chat
            threads = chat.thread_id is None and chat.platform not in THREADLESS_PLATFORMS
            done = await forget_chat(
                self.store.engine, msg.chat.key, msg.event_key, threads=threads
            )
            log.info("chat forgotten", extra={"chat": msg.chat.key, "threads": done.threads})
            if done.threads:
                which = "its thread" if done.threads == 1 else f"its {done.threads} threads"
                text = (
                    f"Done. I deleted everything stored about this chat and {which} "
                    f"({done.messages} messages and their settings). {_SPEND_KEPT}"
                )
            else:
                text = (
                    f"Done. I deleted everything stored about this chat ({done.messages} "
                    f"messages and its settings). {_SPEND_KEPT}"
                )
        else:  # pragma: no cover - the service routes only POLICY_COMMANDS here
            raise ValueError(name)
        # "forgotten" tells a sink that keeps files of its own for this chat to delete them.
        extras = {FORGOTTEN: msg.chat.key} if name == "forget" else {}
        await sink.send(Reply(text=text, kind=ReplyKind.NOTICE, extras=extras))

    async def _usage(self, args: str, msg: IncomingMessage) -> str:
        platform = msg.chat.platform
        me = user_key(platform, msg.sender.id)
        who = args.split()[0] if args and args.lower() != "me" else me
        if who != me and ":" in who:
            who = _named(who, platform, _USAGE_USAGE)
        admin = self.access.is_admin(platform, msg.sender.id)
        if not msg.is_direct:
            # Everyone in a group or channel reads the answer: one's own spend only.
            lines = [
                "Your usage:",
                _periods(await self.accounting.for_user(platform, msg.sender.id)),
            ]
            if who != me:
                lines += ["", "Ask me in a private chat for anyone else's usage."]
            elif admin:
                lines += ["", "Ask me in a private chat for everyone's usage."]
            return "\n".join(lines)
        if who != me:
            target_platform, _, target_id = who.partition(":")
            if not target_id:
                raise BadInput("bad usage target", user_message=_USAGE_USAGE)
            return f"Usage of {who}:\n" + _periods(
                await self.accounting.for_user(target_platform, target_id)
            )
        lines = ["Your usage:", _periods(await self.accounting.for_user(platform, msg.sender.id))]
        if admin:
            total = await self.accounting.total()
            lines += ["", "All users (this month / all time):"]
            lines += _rows(await self.accounting.by_user(limit=_TOP))
            lines += ["", "Chats (this month / all time):"]
            lines += _rows(await self.accounting.by_chat(limit=_TOP))
            lines += ["", "Total:", _periods(total)]
        return "\n".join(lines)

    async def _budget(self, args: str, msg: IncomingMessage) -> str:
        if not args or args.lower() in ("show", "me"):
            now = utcnow()
            standings = await self.budgets.standings(msg, now)
            if not standings:
                return "No budget limits apply to you."
            return "\n".join(describe(s, now) for s in standings)
        usage = BUDGET_USAGE
        parts = args.split()
        scope = parts[0].lower() if parts else ""
        if scope == "global":
            if len(parts) == 4:
                # The bot's budget is one: a name given (`global everyone`) matched nothing,
                # so a confirmed limit would never have applied.
                raise BadInput("/budget global with a subject", user_message=_GLOBAL_USAGE)
            parts.insert(1, "")
        if len(parts) != 4 or scope not in SCOPES:
            raise BadInput("bad /budget", user_message=usage)
        subject, period_word, value = parts[1], parts[2], parts[3]
        period = _PERIOD_NAMES.get(period_word.lower())
        if period is None or period not in PERIODS:
            raise BadInput("bad /budget period", user_message=usage)
        if scope == "chat" and subject.lower() == "here":
            # A chat budget is its channel's or group's, said in any of its threads.
            subject = msg.chat.parent_key or msg.chat.key
        elif scope in ("user", "chat") and ":" not in subject:
            # People and chats are stored as PLATFORM:ID; a bare ID is one of this platform.
            subject = f"{msg.chat.platform}:{subject}"
        elif scope in ("user", "chat"):
            subject = _named(subject, msg.chat.platform, usage)
        if scope == "chat":
            subject = budget_chat(subject)  # a thread's key names its channel or group
        label = {"user": subject, "chat": f"chat {subject}", "global": "the bot"}[scope]
        setter = user_key(msg.chat.platform, msg.sender.id)
        if value.lower() == "default":
            await self.budgets.clear_override(scope, subject, period)
            return f"The {PERIOD_WORDS[period]} budget of {label} is back to the configured one."
        if value.lower() in ("off", "none", "unlimited"):
            await self.budgets.set_override(scope, subject, period, None, setter)
            return f"{label} now has no {PERIOD_WORDS[period]} budget limit."
        try:
            amount = float(value.lstrip("$"))
        except ValueError:
            raise BadInput("bad /budget amount", user_message=usage) from None
        if not amount >= 0 or amount == float("inf"):
            raise BadInput("bad /budget amount", user_message=usage)
        await self.budgets.set_override(scope, subject, period, amount, setter)
        shown = "$0 (no access)" if amount == 0 else money(amount)
        return f"The {PERIOD_WORDS[period]} budget of {label} is now {shown}."


def _periods(summary: Summary) -> str:
    def line(label: str, cost: float, requests: int) -> str:
        return (
            f"  {label:<11} {money(cost):>10}  ({requests} request{'' if requests == 1 else 's'})"
        )

    return "\n".join(
        [
            line("today", summary.today.cost_usd, summary.today.requests),
            line("this month", summary.month.cost_usd, summary.month.requests),
            line("all time", summary.all_time.cost_usd, summary.all_time.requests),
        ]
    )


def _rows(rows: list[Row]) -> list[str]:
    if not rows:
        return ["  (none yet)"]
    return [
        f"  {r.who}: {money(r.summary.month.cost_usd)} / {money(r.summary.all_time.cost_usd)}"
        for r in rows
    ]
