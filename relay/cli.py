# The command line: wiring only. `relay serve`, `relay check-config`.
from __future__ import annotations

import asyncio
import os
import sys

import click

from relay import config as config_mod
from relay import logs
from relay.errors import ConfigError

DEFAULT_FILE = "relay.toml"


def _load(path: str | None) -> config_mod.Config:
    """--config FILE, else ./relay.toml when present, else the embedded default.

    A bad configuration ends the process here: one line, exit 2, before any port is bound.
    """
    if path is None and os.path.exists(DEFAULT_FILE):
        path = DEFAULT_FILE
    try:
        return config_mod.load(path) if path is not None else config_mod.default_config()
    except ConfigError as e:
        click.echo(f"relay: configuration error: {e}", err=True)
        sys.exit(2)


@click.group()
def main() -> None:
    """relay: an SMTP relay with SES-style open/click tracking and event publishing."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help=f"TOML configuration file (default: ./{DEFAULT_FILE} if present, else the embedded default)")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="text", show_default=True, type=click.Choice(logs.FORMATS),
              help="json: one JSON object per line (time, level, logger, message and fields)")
def serve(config_path: str | None, log_level: str, log_format: str) -> None:
    """Accept mail over SMTP, spool it, deliver it upstream and serve tracking."""
    cfg = _load(config_path)
    logs.configure(level=log_level, log_format=log_format)
    from relay.app import serve as run

    try:
        asyncio.run(run(cfg))
    except OSError as e:  # e.g. the port is taken: one clear line, non-zero exit
        click.echo(f"relay: cannot start: {e}", err=True)
        sys.exit(1)


@main.command("check-config")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
def check_config(config_path: str | None) -> None:
    """Validate the configuration and exit (0 when valid)."""
    cfg = _load(config_path)
    sets = ", ".join(cfg.configuration_sets) or "none"
    click.echo(f"{cfg.source}: OK (configuration sets: {sets})")


if __name__ == "__main__":
    main()
