""".env.example shows a setting's default where it looks like one."""

from __future__ import annotations

import pytest

from core.config import Settings
from tests.deploy.test_deploy_files import env_example_settings, settings_variables


def test_the_first_line_of_a_setting_with_a_default_shows_that_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `# NAME=VALUE` first in the file reads as "the default": later lines are alternatives
    # (Ollama's URL, PostgreSQL's), settings without a default show examples.
    fields = {
        str(f.validation_alias.choices[0]): name  # type: ignore[union-attr]
        for name, f in Settings.model_fields.items()
    }
    for other in settings_variables():
        monkeypatch.delenv(other, raising=False)
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    seen: set[str] = set()
    differ = []
    for name, value in env_example_settings():
        if name in seen or name not in fields or value == "":
            continue
        seen.add(name)
        default = getattr(defaults, fields[name])
        if default is None or default == "":
            continue
        with monkeypatch.context() as env:
            env.setenv(name, value)
            shown = getattr(Settings(_env_file=None), fields[name])  # type: ignore[call-arg]
        if shown != default:
            differ.append(name)
    assert differ == []
    assert {"RELAYBOT_SYSTEM_PROMPT", "RELAYBOT_VISION_MODELS"} <= seen
