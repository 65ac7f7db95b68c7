# The command line: wiring only. `relay serve` runs the relay; `relay stats`, `events`,
# `messages`, `message` read the storage file (also while `relay serve` runs on it:
# WAL lets readers and the writer work at once); `prune`, `webhook dead-letters|replay`,
# `check-config`, `suppression list|add|remove|import|export`, `dkim keygen`, `--version`.
# Tables come from relay.report, queries from relay.stats.
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from datetime import UTC, datetime
from typing import Any, AsyncIterator, Awaitable, Callable, NoReturn, TypeVar

import click

from relay import config as config_mod
from relay import logs, malloc, report, stats
from relay.errors import ConfigError
from relay.store import Store

T = TypeVar("T")
DEFAULT_FILE = "relay.toml"
FOLLOW_INTERVAL = 0.5  # seconds between polls of `relay events --follow`
PAGE = 1000  # events read per query


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


def _fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr and out: 2 for bad input (as click's usage errors), 1 otherwise."""
    click.echo(f"relay: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """click's group, but a usage error is one line on stderr (exit 2), not a usage page."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `relay`: the help page (click >= 8.2)
                e.show()
                sys.exit(e.exit_code)
            cmd = e.ctx.command_path if e.ctx is not None else "relay"
            _fail(f"{e.format_message()} (see {cmd} --help)", e.exit_code)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except click.Abort:
            _fail("aborted", 1)
        sys.exit(rv if isinstance(rv, int) else 0)


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help=f"TOML configuration file (default: ./{DEFAULT_FILE} if present, else the embedded default)")
set_option = click.option(
    "--configuration-set", "configuration_set", default=None, metavar="NAME",
    help="Only this configuration set ('' for mail sent without one)")
since_option = click.option("--since", default=None, metavar="7d|ISO",
                            help="From this long ago (30m, 24h, 7d, 2w) or this ISO-8601 time (UTC if no zone)")
json_option = click.option("--json", "as_json", is_flag=True, help="The JSON document instead of tables")


@click.group(cls=_Group)
@click.version_option(package_name="relay", prog_name="relay", message="%(prog)s %(version)s")
def main() -> None:
    """relay: an SMTP relay with SES-style open/click tracking and event publishing."""


@main.command(short_help="Run the relay: SMTP intake, delivery, tracking.")
@config_option
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="text", show_default=True, type=click.Choice(logs.FORMATS),
              help="json: one JSON object per line (time, level, logger, message and fields)")
def serve(config_path: str | None, log_level: str, log_format: str) -> None:
    """Accept mail over SMTP, spool it, deliver it upstream and serve tracking."""
    cfg = _load(config_path)
    logs.configure(level=log_level, log_format=log_format)
    malloc.fix_mmap_threshold()  # a big message's memory goes back to the system once freed
    if cfg.server.processes > 1:
        from relay import supervisor

        try:
            sys.exit(supervisor.run(cfg))
        except OSError as e:  # e.g. the port is taken: one clear line, non-zero exit
            click.echo(f"relay: cannot start: {e}", err=True)
            sys.exit(1)
    from relay.app import serve as run

    try:
        asyncio.run(run(cfg))
    except OSError as e:  # e.g. the port is taken: one clear line, non-zero exit
        click.echo(f"relay: cannot start: {e}", err=True)
        sys.exit(1)


@main.command("check-config", short_help="Validate the configuration; print its warnings.")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration and exit (0 when valid), with the warnings serve would log."""
    cfg = _load(config_path)
    sets = ", ".join(cfg.configuration_sets) or "none"
    click.echo(f"{cfg.source}: OK (configuration sets: {sets})")
    for warning in config_mod.warnings(cfg):
        click.echo(f"relay: warning: {warning}", err=True)


# --- reading the storage file --------------------------------------------------------

@contextlib.asynccontextmanager
async def _reading(cfg: config_mod.Config, *, write: bool = False) -> AsyncIterator[Store]:
    """The storage file, opened beside a running `relay serve` (WAL: readers never block
    its writer), read-only unless `write`. Never created here: a missing file is a wrong
    directory or --config."""
    path = cfg.storage.path
    if not os.path.exists(path):
        _fail(f"no storage file at {path} ({cfg.source}): start relay serve first, or pass --config", 1)
    store = Store(path)
    try:
        await store.open(readonly=not write)
    except (OSError, sqlite3.Error) as e:  # e.g. not ours to open: one line, not a traceback
        await store.close()
        _fail(f"cannot open the storage file {path}: {e}", 1)
    try:
        yield store
    finally:
        await store.close()


def _query(cfg: config_mod.Config, query: Callable[[Store], Awaitable[T]], *, write: bool = False) -> T:
    """Run one query against the storage file (read-only unless `write`) and return its result."""
    async def run() -> T:
        async with _reading(cfg, write=write) as store:
            return await query(store)
    return asyncio.run(run())


def _now() -> datetime:
    return datetime.now(UTC)


def _set(cfg: config_mod.Config, name: str | None) -> str | None:
    """--configuration-set: '' is mail without a set. A well-formed name that is not
    configured (any more) is read anyway, with a warning: the file may still hold its mail."""
    if name is None or name == stats.NO_SET:
        return name
    if not config_mod.NAME_RE.match(name):
        _fail(f"--configuration-set: expected a name of 1-64 characters A-Z a-z 0-9 - _, got {name!r}")
    if name not in cfg.configuration_sets:
        known = ", ".join(cfg.configuration_sets) or "none"
        click.echo(f"relay: warning: configuration set {name!r} is not in {cfg.source} (configured: {known}); "
                   "reading what the storage file has for it", err=True)
    return name


def _tag(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    name, eq, tag_value = value.partition("=")
    if not eq or not name or not tag_value:
        _fail(f"--tag: expected NAME=VALUE (e.g. campaign=spring), got {value!r}")
    return name, tag_value


def _period(since: str | None, until: str | None) -> stats.Period:
    try:
        return stats.parse_period(since, until, now=_now())
    except stats.PeriodError as e:
        _fail(f"--since/--until: {e}")


def _since(since: str | None) -> datetime | None:
    if since is None:
        return None
    try:
        return stats.parse_time(since, now=_now())
    except stats.PeriodError as e:
        _fail(f"--since: {e}")


def _types(value: str | None) -> tuple[str, ...]:
    """--type open,click (keys or SES eventTypes, any case) -> SES eventTypes."""
    if not value:
        return ()
    try:
        return tuple(dict.fromkeys(stats.event_types(value.split(","))))
    except ValueError as e:
        _fail(f"--type: {e}")


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False))


def _line(record: Any) -> str:
    # As the file destination writes them: compact, one record per line.
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


@main.command("stats", short_help="Sending statistics: counts, rates, top links.")
@config_option
@set_option
@since_option
@click.option("--until", default=None, metavar="ISO", help="Up to this time (default: now)")
@click.option("--by", type=click.Choice(["hour", "day"]), default=None, help="Add a series per UTC hour or day")
@click.option("--tag", default=None, metavar="NAME=VALUE", help="Only messages with this message tag")
@json_option
def stats_command(config_path: str | None, configuration_set: str | None, since: str | None,
                  until: str | None, by: str | None, tag: str | None, as_json: bool) -> None:
    """Sending statistics: counts, rates, top links and link tags (default: the last 7 days)."""
    cfg = _load(config_path)
    cset, period, tag_pair = _set(cfg, configuration_set), _period(since, until), _tag(tag)

    doc = _query(cfg, lambda store: stats.stats(store, configuration_set=cset, period=period, by=by, tag=tag_pair))
    if as_json:
        _print_json(doc)
    else:
        click.echo(report.stats_text(doc, tag=tag_pair))


@main.command("events", short_help="SES-format event records as JSON Lines.")
@config_option
@click.option("--type", "types", default=None, metavar="TYPES",
              help="Comma-separated event types, e.g. open,click (or Open,Click)")
@click.option("--message", "message_id", default=None, metavar="ID", help="Only events about this message")
@click.option("--recipient", default=None, metavar="ADDR", help="Only events about this recipient")
@set_option
@since_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they come (like tail -f)")
def events_command(config_path: str | None, types: str | None, message_id: str | None, recipient: str | None,
                   configuration_set: str | None, since: str | None, follow: bool) -> None:
    """The SES-format event records as JSON Lines, oldest first (all that are kept, or --since)."""
    cfg = _load(config_path)
    filters: dict[str, Any] = {"types": _types(types), "message_id": message_id, "recipient": recipient,
                               "configuration_set": _set(cfg, configuration_set), "since": _since(since)}

    async def run() -> None:
        stop = asyncio.Event()
        if follow:  # Ctrl-C or SIGTERM ends following normally (exit 0)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        async with _reading(cfg) as store:
            after = 0
            while not stop.is_set():
                batch = await stats.events(store, **filters, after_seq=after, limit=PAGE)
                if batch:
                    _write_lines(_line(record) for _, record in batch)
                    after = batch[-1][0]
                if len(batch) == PAGE:
                    continue
                if not follow:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), FOLLOW_INTERVAL)

    asyncio.run(run())


def _write_lines(lines: Any) -> None:
    try:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`relay events | head`): stop quietly, as a pipe would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)


@main.command("messages", short_help="Messages, newest first.")
@config_option
@since_option
@set_option
@click.option("--recipient", default=None, metavar="ADDR", help="Only messages to this recipient")
@click.option("--search", default=None, metavar="TEXT", help="Recipient, subject or set containing TEXT")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@json_option
def messages_command(config_path: str | None, since: str | None, configuration_set: str | None,
                     recipient: str | None, search: str | None, limit: int, as_json: bool) -> None:
    """Messages, newest first, with their recipients' states and engagement."""
    cfg = _load(config_path)
    period = _period(since, None) if since else None
    cset = _set(cfg, configuration_set)

    rows = _query(cfg, lambda store: stats.messages(store, period=period, configuration_set=cset,
                                                    recipient=recipient, search=search, limit=limit))
    if as_json:
        _print_json(rows)
    else:
        click.echo(report.messages_text(rows))


@main.command("message", short_help="One message's per-recipient timeline.")
@config_option
@click.argument("message_id", metavar="ID")
@json_option
def message_command(config_path: str | None, message_id: str, as_json: bool) -> None:
    """One message: each recipient's timeline (send, delivery, delays, bounce, opens, clicks)."""
    cfg = _load(config_path)

    doc = _query(cfg, lambda store: stats.message(store, message_id))
    if doc is None:
        _fail(f"no message {message_id!r} in {cfg.storage.path} (unknown, or pruned)", 1)
    if as_json:
        _print_json(doc)
    else:
        click.echo(report.message_text(doc))


@main.command("prune", short_help="Drop what is past its retention now.")
@config_option
def prune_command(config_path: str | None) -> None:
    """Drop what is past its retention now ([storage] retention_days, stats_retention_days,
    body_retention_days; finished messages after [tracking] window_days), as relay serve
    does on its own every hour."""
    from relay import retention

    cfg = _load(config_path)

    _query(cfg, lambda store: retention.prune(store, cfg, now=time.time()), write=True)
    s = cfg.storage
    click.echo(f"{s.path}: pruned (events older than {s.retention_days:g} days, hourly counts older than "
               f"{s.stats_retention_days:g}, bodies older than {s.body_retention_days:g}, finished messages "
               f"older than {cfg.tracking.window_days:g})")


@main.group("webhook", cls=_Group, short_help="Webhook events an endpoint never took: list, replay.")
def webhook_group() -> None:
    """Dead letters: webhook events refused for [webhook] max_retry_seconds (or with a 4xx, 3 times)."""


destination_option = click.option("--destination", default=None, metavar="[SET/]NAME",
                                  help="Only this webhook destination: SET/NAME (e.g. default/hook), or "
                                       "NAME when one configuration set has it")


def _webhooks(cfg: config_mod.Config) -> list[str]:
    """The configured webhook destinations, as "set/name"."""
    return [f"{c.name}/{d.name}" for c in cfg.configuration_sets.values()
            for d in c.event_destinations if d.type == "webhook"]


def _destination(cfg: config_mod.Config, name: str | None, *, configured: bool = False) -> str | None:
    """--destination SET/NAME, or a bare NAME that names one configured webhook destination;
    a SET/NAME that is not configured (any more) is read anyway, with a warning (refused
    when `configured`)."""
    if name is None:
        return None
    known = _webhooks(cfg)
    cset, slash, dest = name.partition("/")
    if not slash and config_mod.NAME_RE.match(name):
        # Destination names are unique within a set only (SES), so a bare NAME must be unambiguous.
        matches = [k for k in known if k.partition("/")[2] == name]
        if len(matches) == 1:
            return matches[0]
        if matches:
            _fail(f"--destination: {name!r} is a webhook destination of several configuration sets "
                  f"({', '.join(matches)}): give SET/NAME")
        _fail(f"--destination: no webhook destination named {name!r} in {cfg.source} "
              f"(configured: {', '.join(known) or 'none'}); give SET/NAME for one no longer configured")
    if not slash or not config_mod.NAME_RE.match(cset) or not config_mod.NAME_RE.match(dest):
        _fail(f"--destination: expected SET/NAME or NAME (e.g. default/hook or hook), got {name!r}")
    if name not in known and configured:
        _fail(f"--destination: {name!r} is not a webhook destination in {cfg.source} (configured: "
              f"{', '.join(known) or 'none'}): nothing would post its dead letters; configure it again first")
    if name not in known:
        click.echo(f"relay: warning: {name!r} is not a webhook destination in {cfg.source} "
                   f"(configured: {', '.join(known) or 'none'}); reading the storage file anyway", err=True)
    return name


@webhook_group.command("dead-letters", short_help="List the dead letters, oldest first.")
@config_option
@destination_option
@json_option
def dead_letters_command(config_path: str | None, destination: str | None, as_json: bool) -> None:
    """The webhook events moved to the dead letters, oldest first, with the last refusal."""
    cfg = _load(config_path)
    name = _destination(cfg, destination)

    rows = _query(cfg, lambda store: stats.dead_letters(store, name))
    if as_json:
        _print_json(rows)
    else:
        click.echo(report.dead_letters_text(rows))


@webhook_group.command("replay", short_help="Send the dead letters again.")
@config_option
@destination_option
def replay_command(config_path: str | None, destination: str | None) -> None:
    """Move the dead letters back to their destination's outbox: a running relay serve
    posts them within seconds (no restart), each with a fresh max_retry_seconds."""
    from relay.store import webhooks

    cfg = _load(config_path)
    name = _destination(cfg, destination, configured=True)
    # Only destinations this configuration runs: another's rows would wait in the outbox
    # with no sender, out of the dead-letter list; they stay listed instead.
    targets = [name] if name else _webhooks(cfg)

    async def replay(store: Store) -> tuple[int, list[str]]:
        n = 0
        for target in targets:
            n += await webhooks.replay(store, target, now=time.time())
        left = [] if name else [d for d, _ in await webhooks.dead_letter_counts(store) if d not in targets]
        return n, sorted(left)

    n, left = _query(cfg, replay, write=True)
    click.echo(f"{n} dead letter(s) re-queued" + (f" for {name}" if name else ""))
    if left:
        click.echo(f"relay: warning: dead letters of destinations not in {cfg.source} stay listed: "
                   f"{', '.join(left)}", err=True)


@main.group("suppression", cls=_Group, short_help="The account suppression list: list, add, remove, import, export.")
def suppression_group() -> None:
    """The account-level suppression list (SES's): mail to a listed address is not sent
    (a Bounce, OnAccountSuppressionList) when its reason is in the set's suppressed reasons."""


def _address(value: str) -> str:
    from relay import suppression

    address = suppression.normalize(value)
    if not suppression.valid_address(address):
        _fail(f"ADDRESS: expected an email address like user@example.com, got {value!r}")
    return address


@suppression_group.command("list", short_help="The suppressed addresses.")
@config_option
@json_option
def suppression_list_command(config_path: str | None, as_json: bool) -> None:
    """The suppressed addresses by address, with reason, time and the message that caused it."""
    from relay.store import suppression as store_mod

    cfg = _load(config_path)
    rows = _query(cfg, lambda store: store_mod.entries(store))
    if as_json:
        _print_json([e.as_json() for e in rows])
        return
    if not rows:
        click.echo("no suppressed addresses")
        return
    table = [e.as_json() for e in rows]
    width = max(len(str(r["emailAddress"])) for r in table)
    click.echo(f"{'ADDRESS':<{width}}  REASON     SINCE                 MESSAGE")
    for r in table:
        click.echo(f"{r['emailAddress']:<{width}}  {r['reason']:<9}  {r['lastUpdateTime']:<20}  {r['messageId'] or '-'}")


@suppression_group.command("add", short_help="Add an address (or update its reason).")
@config_option
@click.argument("address")
@click.option("--reason", required=True, type=click.Choice(["BOUNCE", "COMPLAINT"], case_sensitive=False))
def suppression_add_command(config_path: str | None, address: str, reason: str) -> None:
    """Put ADDRESS on the list (SES PutSuppressedDestination); a listed one gets the new reason."""
    from relay.store import suppression as store_mod

    cfg = _load(config_path)
    addr = _address(address)
    stmts = store_mod.suppress_statements(addr, reason.upper(), None, time.time())
    _query(cfg, lambda store: store.write(stmts), write=True)
    click.echo(f"{addr}: suppressed ({reason.upper()})")


@suppression_group.command("remove", short_help="Take an address off the list.")
@config_option
@click.argument("address")
def suppression_remove_command(config_path: str | None, address: str) -> None:
    """Take ADDRESS off the list (SES DeleteSuppressedDestination); exit 1 if it was not on it."""
    from relay.store import suppression as store_mod

    cfg = _load(config_path)
    addr = _address(address)

    async def remove(store: Store) -> bool:
        found = await store_mod.is_suppressed(store, addr)
        if found is not None:
            await store.write(store_mod.remove_statements(addr))
        return found is not None

    if not _query(cfg, remove, write=True):
        _fail(f"{addr} is not on the suppression list", 1)
    click.echo(f"{addr}: removed from the suppression list")


@suppression_group.command("import", short_help="Add the addresses of a CSV file.")
@config_option
@click.argument("file", type=click.File("r", encoding="utf-8"))
def suppression_import_command(config_path: str | None, file: Any) -> None:
    """Add every address of FILE (CSV as SES's bulk import: a header emailAddress,reason,
    then one address a line; reason BOUNCE or COMPLAINT). A file with a bad line is not
    imported at all: every bad line is named (exit 2)."""
    from relay import suppression
    from relay.store import suppression as store_mod

    cfg = _load(config_path)
    try:
        rows = suppression.parse_csv(file.read())
    except UnicodeDecodeError:
        _fail(f"{file.name}: not UTF-8 text; nothing imported")
    except suppression.CsvError as e:
        for n, why in e.problems:
            click.echo(f"relay: {file.name}:{n}: {why}", err=True)
        _fail(f"{file.name}: {len(e.problems)} bad line(s); nothing imported")
    stmts = store_mod.import_statements(rows, time.time())
    _query(cfg, lambda store: store.write(stmts), write=True)
    click.echo(f"{len(rows)} address(es) imported from {file.name}")


@suppression_group.command("export", short_help="The list as CSV (what import reads).")
@config_option
@click.argument("file", required=False, type=click.Path(dir_okay=False, writable=True))
def suppression_export_command(config_path: str | None, file: str | None) -> None:
    """The list as CSV (emailAddress,reason) to FILE, or to standard output."""
    from relay import suppression
    from relay.store import suppression as store_mod

    cfg = _load(config_path)
    text = suppression.render_csv(_query(cfg, lambda store: store_mod.entries(store)))
    if file is None:
        _write_lines(text.splitlines())
        return
    try:
        with open(file, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        _fail(f"cannot write {file}: {e.strerror or e}", 1)
    click.echo(f"{text.count(chr(10)) - 1} address(es) exported to {file}", err=True)


@main.group("dkim", cls=_Group, short_help="DKIM signing keys: make one.")
def dkim_group() -> None:
    """Keys for [dkim.<domain>]: relay signs the copies it changes with them (RFC 6376)."""


@dkim_group.command("keygen", short_help="Write a new signing key; print its DNS record.")
@click.argument("domain")
@click.argument("selector")
@click.option("--type", "key_type", type=click.Choice(["rsa", "ed25519"]), default="rsa", show_default=True,
              help="rsa (every receiver checks it) or ed25519 (RFC 8463; not every receiver checks it yet)")
@click.option("--bits", type=click.IntRange(min=2048, max=8192), default=2048, show_default=True,
              help="RSA key size (ignored for ed25519)")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Where to write the private key (default: ./dkim-DOMAIN-SELECTOR.pem); never overwritten")
def dkim_keygen_command(domain: str, selector: str, key_type: str, bits: int, out: str | None) -> None:
    """Write a private key (PEM, mode 0600) for DOMAIN, then print the TXT record to publish
    at SELECTOR._domainkey.DOMAIN and the [dkim."DOMAIN"] table for relay.toml."""
    from relay import dkim

    domain = domain.lower().rstrip(".")
    if not config_mod.DOMAIN_RE.match(domain):
        _fail(f"DOMAIN: expected a domain name like example.com, got {domain!r}")
    if not config_mod.SELECTOR_RE.match(selector):
        _fail(f"SELECTOR: expected a DNS label like s2026 (RFC 6376 §3.1), got {selector!r}")
    path = os.path.abspath(out or f"dkim-{domain}-{selector}.pem")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # a secret: owner only
    except FileExistsError:
        _fail(f"{path} exists; not overwritten (choose another --out)", 1)
    except OSError as e:
        _fail(f"cannot write {path}: {e.strerror or e}", 1)
    try:
        pem, key = dkim.generate_key(key_type, bits)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(path)
        _fail(f"cannot write {path}: {e.strerror or e}", 1)
    what = f"RSA {key.bits}-bit" if key.key_type == "rsa" else "Ed25519"
    click.echo(f"Wrote the {what} private key to {path} (mode 0600; keep it secret, back it up).\n")
    click.echo("Publish this DNS TXT record (strings of 255 bytes at most, read as one):")
    click.echo(dkim.txt_record(domain, selector, key) + "\n")
    click.echo("Then add to relay.toml:")
    click.echo(f'[dkim."{domain}"]\nselector = "{selector}"\nprivate_key = {json.dumps(path)}')


if __name__ == "__main__":
    main()
