"""Slack: a workspace assistant over the Events API (HTTP) or Socket Mode."""

from bots.slack.adapter import SlackAdapter
from bots.slack.events import to_incoming
from bots.slack.sink import SinkOptions, SlackSink

__all__ = ["SinkOptions", "SlackAdapter", "SlackSink", "to_incoming"]
