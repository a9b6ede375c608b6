"""What every `run.py` invocation does before its command: the local ZenML server is looked after
only for the commands that open the store; the others are declared `LocalCommand` where they are
declared, and a new command opens the store unless it says otherwise."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import run
from visionzero.cli.startup import LocalCommand


def test_the_local_commands_are_declared_with_the_commands() -> None:
    local = {
        name for name, command in run.cli.commands.items() if isinstance(command, LocalCommand)
    }
    assert local == {"backfill", "config", "dashboard", "render-k8s", "schedule", "stack"}


def test_only_the_commands_that_open_the_store_look_after_the_local_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    looked_after: list[str] = []
    monkeypatch.setattr(
        "visionzero.platform.stack.ensure_local_server", lambda: looked_after.append("server")
    )
    monkeypatch.setattr("visionzero.status.collect_status", lambda: {"data": None})
    schedule = CliRunner().invoke(run.cli, ["schedule", "--print"])
    assert schedule.exit_code == 0 and "run.py monitor" in schedule.output
    assert looked_after == []
    status = CliRunner().invoke(run.cli, ["status", "--json"])
    assert status.exit_code == 0 and json.loads(status.output) == {"data": None}
    assert looked_after == ["server"]


def test_the_backfill_options_go_before_training_only() -> None:
    for args, message in (
        (["--backfill", "status"], "--backfill and --since go before training, not a sub-command"),
        (["--since", "2020-01-01"], "--since goes with --backfill"),
        (["--backfill", "--offline"], "--backfill fetches from the API: it cannot run --offline"),
    ):
        result = CliRunner().invoke(run.cli, args)
        assert result.exit_code == 2 and message in result.output, result.output
