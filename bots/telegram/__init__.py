"""Telegram: python-telegram-bot v22 translated to and from the core's neutral types."""

from bots.telegram.adapter import TelegramAdapter
from bots.telegram.convert import BotIdentity, to_incoming
from bots.telegram.sink import Pacing, TelegramSink

__all__ = ["BotIdentity", "Pacing", "TelegramAdapter", "TelegramSink", "to_incoming"]
