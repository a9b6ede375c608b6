"""What every invocation does before its command: the environment, a moved project's stores
re-pointed, the options checked, the local ZenML server up for the commands that use the store,
and the stack the settings name in place."""

from __future__ import annotations

from datetime import datetime

import click

from visionzero.platform.output import configure_output
from visionzero.platform.settings import configure_environment


class LocalCommand(click.Command):
    """A command that never opens the ZenML store: no local server is started for it. Declared
    beside the command (`@cli.command(cls=LocalCommand)`), not in a list kept elsewhere."""


def start(ctx: click.Context, offline: bool, with_backfill: bool, since: datetime | None) -> None:
    """Prepare the process for the command `ctx` invokes (none: training), in this order."""
    configure_environment()
    configure_output()
    from visionzero.platform.moved_project import repoint_moved_stores

    moved = repoint_moved_stores()  # a copied or moved project: before anything opens a store
    if moved:
        click.echo(moved, err=True)  # stderr: `status --json` stays JSON
    if (with_backfill or since) and ctx.invoked_subcommand is not None:
        raise click.UsageError("--backfill and --since go before training, not a sub-command")
    if since and not with_backfill:
        raise click.UsageError("--since goes with --backfill")
    if with_backfill and offline:
        raise click.UsageError("--backfill fetches from the API: it cannot run --offline")
    command = ctx.command.get_command(ctx, ctx.invoked_subcommand or "")
    if not isinstance(command, LocalCommand):
        from visionzero.platform.stack import ensure_local_server

        ensure_local_server()


def stack_in_place() -> None:
    """The stack the settings name, registered and active; a cluster stack the settings cannot
    make (a missing server, a wrong URI) stops the command in one line naming the variables."""
    from visionzero.platform.stack import ensure_stack
    from visionzero.platform.stack_recipe import StackConfigError

    try:
        ensure_stack()
    except StackConfigError as exc:
        raise click.ClickException(str(exc)) from exc
