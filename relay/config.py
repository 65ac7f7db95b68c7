# Configuration: TOML -> frozen, keyword-only dataclasses, validated once at start-up.
# Every error names the file, the key and what was expected, in one line.
# Every key is documented once, in config.example.toml, with its default.
from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import unquote, urlsplit

from relay.errors import ConfigError
from relay.limits import DEFAULT_PER_CLIENT

if TYPE_CHECKING:
    from relay.dkim import SigningKey

# SES MatchingEventTypes, in the v1/config spelling relay uses.
EVENT_TYPES = (
    "send", "reject", "bounce", "complaint", "delivery", "open", "click",
    "renderingFailure", "deliveryDelay", "subscription",
)
DESTINATION_TYPES = ("sqlite", "file", "webhook")
WEBHOOK_FORMATS = ("ses", "sns")  # the bare record, or wrapped as Amazon SNS posts it
MAIL_DESTINATIONS = ("message", "recipient")  # mail.destination: SES's meaning, or the event's recipient
# SNS TopicArn syntax: arn:<partition>:sns:<region>:<account>:<topic name>.
TOPIC_ARN_RE = re.compile(r"^arn:[A-Za-z0-9-]+:sns:[A-Za-z0-9-]*:[0-9A-Za-z-]*:[A-Za-z0-9_-]{1,256}$")
HTTPS_POLICIES = ("REQUIRE", "REQUIRE_OPEN_ONLY", "OPTIONAL")  # SES TrackingOptions.HttpsPolicy
# SES quotas: configuration set and event destination names are <= 64 of A-Z a-z 0-9 - _.
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
DKIM_SIGN = ("changed", "all")  # sign only copies relay rewrote, or every message from the domain
SUPPRESSION_REASONS = ("bounce", "complaint")  # SES SuppressedReasons (BOUNCE, COMPLAINT)
# A DKIM selector: dot-separated DNS labels (RFC 6376 §3.1).
SELECTOR_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# One message to 10,000 recipients, tracked, completes with ~80 MB over idle (2026-11-29).
MEASURED_MAX_RECIPIENTS = 10_000


@dataclass(frozen=True, kw_only=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class SmtpConfig:
    listen: Listen = Listen(host="127.0.0.1", port=2525)
    hostname: str = "relay.localhost"
    max_message_size: int = 40 * 1024 * 1024  # SES's SMTP limit is 40 MB
    max_recipients: int = 50  # SES: 50 recipients per message
    config_set_header: str = "X-SES-CONFIGURATION-SET"
    tags_header: str = "X-SES-MESSAGE-TAGS"
    default_configuration_set: str | None = None
    # Never an open relay: only these client networks may submit mail.
    allowed_clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = LOOPBACK
    # SMTP AUTH (PLAIN, LOGIN): the user becomes the ses:caller-identity tag.
    users: Mapping[str, str] = field(default_factory=dict, repr=False)
    accept_any_auth: bool = False  # for mailers that insist on AUTH: any credentials pass
    auth_required: bool = False  # MAIL without AUTH gets 530
    tls_cert: str | None = None  # STARTTLS; with it, AUTH is offered only after STARTTLS
    tls_key: str | None = None
    # Connection caps (Postfix process_limit, smtpd_client_connection_count_limit).
    max_connections: int = 0  # 0: from the open-files limit at start (limits.connection_budget)
    max_connections_per_client: int = DEFAULT_PER_CLIENT
    timeout: float = 300.0  # idle seconds per read, DATA included (RFC 5321 §4.5.3.2)
    # AUTH against guessing (Postfix smtpd_error_sleep_time, smtpd_hard_error_limit).
    auth_failure_delay: float = 1.0
    auth_max_failures_per_connection: int = 3
    auth_failure_budget: int = 10  # failures per client address per auth_failure_window
    auth_failure_window: float = 600.0
    # DATA bytes held in memory at once, all sessions together (default 4 x max_message_size).
    max_concurrent_data_bytes: int = 4 * 40 * 1024 * 1024

    @property
    def auth_enabled(self) -> bool:
        return bool(self.users) or self.accept_any_auth


@dataclass(frozen=True, kw_only=True)
class UpstreamConfig:
    url: str = field(default="maildir:./outbox", repr=False)  # may hold a password
    scheme: str = "maildir"  # smtp | smtp+starttls | smtps | maildir
    host: str = ""
    port: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs
    maildir: str | None = "./outbox"
    connections: int = 4
    timeout: float = 60.0
    data_timeout: float = 600.0  # for the reply to the final "." (RFC 5321 §4.5.3.2.6)
    max_delivery_seconds: float = 4 * 3600.0
    retry_first_delay: float = 5.0
    retry_max_delay: float = 300.0
    tls_ca_file: str | None = None  # extra CA bundle for the upstream's certificate
    tls_verify: bool = True  # false: accept any certificate (an internal MTA, say)

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs."""
        if self.scheme == "maildir":
            return f"maildir:{self.maildir}"
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    listen: Listen = Listen(host="127.0.0.1", port=8080)
    base_url: str = "http://127.0.0.1:8080"
    window_days: float = 60.0
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # HMAC secrets; the first signs, all verify. The generated one in storage (made when
    # none are configured) always verifies too, so links already mailed keep working.
    secrets: tuple[str, ...] = field(default=(), repr=False)
    # The port faces the internet: connection caps and timeouts (config.example.toml).
    max_connections: int = 0  # 0: auto, a share of the file-descriptor limit
    max_connections_per_client: int = DEFAULT_PER_CLIENT
    header_timeout: float = 10.0  # seconds to send a whole request head
    keepalive_timeout: float = 75.0  # seconds an idle kept-alive connection stays open (nginx's default)


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    path: str = "./relay.db"
    retention_days: float = 60.0  # raw events for `relay events` and timelines
    stats_retention_days: float = 400.0  # hourly counters for `relay stats`
    body_retention_days: float = 7.0  # message bodies, for the dashboard's preview; 0 = drop when final


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    """The admin listener: JSON API, /metrics and the dashboard (never the public tracking port)."""

    listen: Listen = Listen(host="127.0.0.1", port=8025)
    # Bearer token (or login form) for every request; required off loopback.
    token: str | None = field(default=None, repr=False)


ADMIN_TOKEN_MIN = 16


@dataclass(frozen=True, kw_only=True)
class EventDestination:
    name: str
    type: str
    enabled: bool = True
    matching_event_types: frozenset[str] = frozenset()
    path: str | None = None  # file
    url: str | None = None  # webhook
    secret: str | None = field(default=None, repr=False)  # webhook signature key
    format: str = "ses"  # webhook: WEBHOOK_FORMATS
    topic_arn: str | None = None  # webhook, sns: the envelope's TopicArn (None: a relay default)
    mail_destination: str = "message"  # webhook: MAIL_DESTINATIONS
    confirm_subscription: bool = False  # webhook, sns: a SubscriptionConfirmation first, as SNS sends

    def matches(self, event_key: str) -> bool:
        return self.enabled and event_key in self.matching_event_types


@dataclass(frozen=True, kw_only=True)
class WebhookConfig:
    """What every webhook destination shares: how long an event may be refused."""

    # Refused (any failure) this long since its first refusal, an event moves to the
    # dead letters; SNS likewise gives up after its delivery policy. 3 days.
    max_retry_seconds: float = 3 * 86400.0
    window: int = 4  # POSTs in flight at once per destination (one per message)


@dataclass(frozen=True, kw_only=True)
class ConfigurationSet:
    name: str
    event_destinations: tuple[EventDestination, ...] = ()
    tracking_base_url: str | None = None  # SES CustomRedirectDomain
    https_policy: str = "OPTIONAL"  # SES HttpsPolicy
    return_path_domain: str | None = None  # overrides [feedback] return_path_domain
    # SES SuppressionOptions.SuppressedReasons for this set; None: the account's [suppression].
    suppressed_reasons: frozenset[str] | None = None
    # Every message gets one-click List-Unsubscribe (RFC 8058), even without
    # X-SES-LIST-MANAGEMENT-OPTIONS (then the contact list is the set's name).
    list_unsubscribe: bool = False

    def publishes(self, event_key: str) -> bool:
        return any(d.matches(event_key) for d in self.event_destinations)

    @property
    def tracks_opens(self) -> bool:
        return self.publishes("open")

    @property
    def tracks_clicks(self) -> bool:
        return self.publishes("click")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    # Serving processes sharing the SMTP and tracking ports (SO_REUSEPORT) over the one
    # storage file; the first also delivers. 1: one process, as before.
    processes: int = field(default_factory=_cores)


@dataclass(frozen=True, kw_only=True)
class DkimDomain:
    """[dkim.<domain>]: the key relay signs copies from that From: domain with (RFC 6376)."""

    domain: str  # lower case
    selector: str
    private_key: str = field(repr=False)  # path of a PEM file (RSA >= 2048 bits or Ed25519, RFC 8463)
    sign: str = "changed"  # DKIM_SIGN
    # The key read from private_key and checked at start-up (None: read when the signer is built).
    key: SigningKey | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class FeedbackConfig:
    """[feedback]: the VERP return path and the inbound listener for DSNs and ARF reports."""

    # Envelope sender of every copy: b-<token>@<return_path_domain>; None: the original.
    return_path_domain: str | None = None
    # The inbound SMTP listener (port 25 in production); None: none.
    listen: Listen | None = None
    # Feedback-loop addresses registered with providers (ARF reports), lower case.
    addresses: tuple[str, ...] = ()
    max_message_size: int = 10 * 1024 * 1024  # a report quotes at most the original
    max_connections: int = 0  # 0: auto, a share of the file-descriptor limit
    max_connections_per_client: int = DEFAULT_PER_CLIENT
    timeout: float = 300.0  # seconds of silence before the connection is closed (RFC 5321 §4.5.3.2)


@dataclass(frozen=True, kw_only=True)
class SuppressionConfig:
    """[suppression]: the account-level suppression list (SES's)."""

    reasons: frozenset[str] = frozenset(SUPPRESSION_REASONS)


@dataclass(frozen=True, kw_only=True)
class Config:
    source: str = "<embedded default>"
    server: ServerConfig = field(default_factory=ServerConfig)
    smtp: SmtpConfig = SmtpConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()
    configuration_sets: Mapping[str, ConfigurationSet] = field(default_factory=dict)
    webhook: WebhookConfig = WebhookConfig()
    # None: no admin listener (a config file without an [admin] section).
    admin: AdminConfig | None = None
    dkim: Mapping[str, DkimDomain] = field(default_factory=dict)  # by lower-case domain
    feedback: FeedbackConfig = FeedbackConfig()
    suppression: SuppressionConfig = SuppressionConfig()

    def tracking_base_url(self, configuration_set: str | None) -> str:
        """Where a message's tracking and unsubscribe links point: the set's own
        (SES CustomRedirectDomain), else [tracking] base_url."""
        cset = self.configuration_sets.get(configuration_set or "")
        return (cset.tracking_base_url if cset is not None else None) or self.tracking.base_url

    def return_path_domain(self, configuration_set: str | None) -> str | None:
        """The VERP domain for a message of this set (the set's own, else the global one)."""
        cset = self.configuration_sets.get(configuration_set or "")
        if cset is not None and cset.return_path_domain is not None:
            return cset.return_path_domain
        return self.feedback.return_path_domain

    def suppressed_reasons(self, configuration_set: str | None) -> frozenset[str]:
        cset = self.configuration_sets.get(configuration_set or "")
        if cset is not None and cset.suppressed_reasons is not None:
            return cset.suppressed_reasons
        return self.suppression.reasons


def in_networks(ip: str, networks: tuple[Any, ...]) -> bool:
    """Whether an address (IPv4-mapped IPv6 counts as IPv4) lies in any of the networks."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in n for n in networks)


def warnings(config: Config) -> list[str]:
    """Valid but probably unintended settings, one line each, for the start-up log."""
    out = []
    smtp = config.smtp
    if not in_networks(smtp.listen.host, LOOPBACK):
        if smtp.allowed_clients == LOOPBACK:
            out.append(f"smtp.listen is {smtp.listen} but smtp.allowed_clients is loopback only: "
                       "other hosts will be refused (550)")
        if smtp.auth_enabled and smtp.tls_cert is None:
            out.append("SMTP AUTH is offered without TLS on a non-loopback listener: "
                       "passwords cross the network in clear (set smtp.tls_cert/tls_key)")
    fb = config.feedback
    domains = [fb.return_path_domain, *(s.return_path_domain for s in config.configuration_sets.values())]
    if fb.listen is not None and not any(domains) and not fb.addresses:
        out.append("feedback.listen is set but there is no return_path_domain and no feedback.addresses: "
                   "the feedback listener will refuse every recipient")
    if any(domains) and fb.listen is None:
        out.append("a return_path_domain is set but feedback.listen is not: bounces to it must reach the "
                   "feedback listener of another relay with the same tracking secrets")
    if smtp.max_recipients > MEASURED_MAX_RECIPIENTS:
        out.append(f"smtp.max_recipients is {smtp.max_recipients}: relay was measured with up to "
                   f"{MEASURED_MAX_RECIPIENTS:,} recipients per message (SES allows 50); larger "
                   "messages cost memory and time in proportion")
    return out


def default_config() -> Config:
    """The embedded default: loopback only, Maildir sink, one set tracking everything."""
    everything = EventDestination(
        name="sqlite", type="sqlite", matching_event_types=frozenset(EVENT_TYPES)
    )
    default = ConfigurationSet(name="default", event_destinations=(everything,))
    return Config(
        smtp=SmtpConfig(default_configuration_set="default"),
        configuration_sets={"default": default},
        admin=AdminConfig(),  # so a newcomer finds the dashboard on 127.0.0.1:8025
    )


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    return parse(data, source=str(p))


def parse(data: Mapping[str, Any], *, source: str = "<config>") -> Config:
    r = _Reader(source)
    known = {"server", "smtp", "upstream", "tracking", "storage", "configuration_sets", "admin", "webhook",
             "dkim", "feedback", "suppression"}
    r.no_unknown(data, "", known)
    smtp = _smtp(r, r.table(data, "smtp"))
    upstream = _upstream(r, r.table(data, "upstream"))
    tracking = _tracking(r, r.table(data, "tracking"))
    storage = _storage(r, r.table(data, "storage"))
    webhook = _webhook(r, r.table(data, "webhook"))
    sets: dict[str, ConfigurationSet] = {}
    for key, name, body in r.named_tables(data, "configuration_sets", NAME_RE,
                                          "a name of 1-64 characters A-Z a-z 0-9 - _ (SES rule)"):
        sets[name] = _configuration_set(r, key, name, body)
    default = smtp.default_configuration_set
    if default is not None and default not in sets:
        r.fail("smtp.default_configuration_set", f"the name of a [configuration_sets.*] table ({', '.join(sets) or 'none defined'})", default)
    admin = _admin(r, r.table(data, "admin"), smtp, tracking) if "admin" in data else None
    server_table = r.table(data, "server")
    r.no_unknown(server_table, "server", {"processes"})
    server = ServerConfig(processes=r.integer(server_table, "server.processes", _cores()))
    dkim: dict[str, DkimDomain] = {}
    for key, domain, body in r.named_tables(data, "dkim", DOMAIN_RE,
                                            "a table named for a domain, like [dkim.\"example.com\"]"):
        dkim[domain.lower()] = _dkim(r, key, domain.lower(), body)
    feedback = _feedback(r, r.table(data, "feedback"), smtp)
    if feedback.listen is not None and admin is not None and _overlap(feedback.listen, admin.listen):
        r.fail("feedback.listen", f"an address other than admin.listen ({admin.listen})", str(feedback.listen))
    if feedback.listen is not None and _overlap(feedback.listen, tracking.listen):
        r.fail("feedback.listen", f"an address other than tracking.listen ({tracking.listen})", str(feedback.listen))
    suppression_table = r.table(data, "suppression")
    r.no_unknown(suppression_table, "suppression", {"reasons"})
    suppression = SuppressionConfig(reasons=_reasons(r, suppression_table, "suppression.reasons",
                                                     SuppressionConfig().reasons))
    return Config(source=source, server=server, smtp=smtp, upstream=upstream, tracking=tracking,
                  storage=storage, configuration_sets=sets, admin=admin, webhook=webhook,
                  dkim=dkim, feedback=feedback, suppression=suppression)


def _reasons(r: _Reader, t: Mapping[str, Any], key: str, default: frozenset[str]) -> frozenset[str]:
    v = t.get(key.rsplit(".", 1)[-1], sorted(default))
    if not isinstance(v, list) or not all(x in SUPPRESSION_REASONS for x in v):
        r.fail(key, f"a list of {', '.join(SUPPRESSION_REASONS)} (may be empty)", v)
    return frozenset(v)


def _domain(r: _Reader, t: Mapping[str, Any], key: str) -> str | None:
    v = r.opt_string(t, key)
    if v is not None and not DOMAIN_RE.match(v):
        r.fail(key, "a domain name like bounces.example.com", v)
    return v.lower() if v is not None else None


def _dkim(r: _Reader, key: str, domain: str, t: dict[str, Any]) -> DkimDomain:
    r.no_unknown(t, key, {"selector", "private_key", "sign"})
    selector = r.string(t, f"{key}.selector", "")
    if not SELECTOR_RE.match(selector):
        r.fail(f"{key}.selector", "a DNS label like s2026 (RFC 6376 §3.1)", selector)
    private_key = r.string(t, f"{key}.private_key", "")
    if not Path(private_key).is_file():
        r.fail(f"{key}.private_key", "a readable PEM file (relay dkim keygen writes one)", private_key)
    sign = t.get("sign", "changed")
    if sign not in DKIM_SIGN:
        r.fail(f"{key}.sign", " or ".join(repr(x) for x in DKIM_SIGN), sign)
    # Read and checked here, so `relay check-config` finds a bad key as `relay serve` would.
    from relay.dkim import KeyProblem, read_key  # dkimpy and cryptography: only when a key is set

    try:
        signing_key = read_key(private_key)
    except KeyProblem as e:
        raise ConfigError(f"{r.source}: {key}.private_key: expected an unencrypted RSA (2048 bits or more) or "
                          f"Ed25519 private key in PEM, got {private_key!r}: {e}") from None
    return DkimDomain(domain=domain, selector=selector, private_key=private_key, sign=sign, key=signing_key)


def _feedback(r: _Reader, t: dict[str, Any], smtp: SmtpConfig) -> FeedbackConfig:
    r.no_unknown(t, "feedback", {"return_path_domain", "listen", "addresses", "max_message_size",
                                 "max_connections", "max_connections_per_client", "timeout"})
    d = FeedbackConfig()
    addresses = t.get("addresses", [])
    if not isinstance(addresses, list) or not all(
            isinstance(a, str) and re.fullmatch(r"[^@\s]+@[^@\s]+", a) for a in addresses):
        r.fail("feedback.addresses", 'a list of addresses like "fbl@example.com"', addresses)
    listen = r.listen(t, "feedback.listen", Listen(host="", port=0)) if "listen" in t else None
    if listen is not None and _overlap(listen, smtp.listen):
        r.fail("feedback.listen", f"an address other than smtp.listen ({smtp.listen})", str(listen))
    return FeedbackConfig(
        return_path_domain=_domain(r, t, "feedback.return_path_domain"),
        listen=listen,
        addresses=tuple(a.lower() for a in addresses),
        max_message_size=r.integer(t, "feedback.max_message_size", d.max_message_size, minimum=1024),
        max_connections=r.integer(t, "feedback.max_connections", d.max_connections, minimum=0),
        max_connections_per_client=r.integer(t, "feedback.max_connections_per_client",
                                             d.max_connections_per_client),
        timeout=r.number(t, "feedback.timeout", d.timeout),
    )


class _Reader:
    """Typed getters that raise ConfigError naming the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, expected: str, got: Any) -> None:
        raise ConfigError(f"{self.source}: {key}: expected {expected}, got {got!r}")

    def no_unknown(self, table: Mapping[str, Any], prefix: str, known: set[str]) -> None:
        for k in table:
            if k not in known:
                full = f"{prefix}.{k}" if prefix else k
                raise ConfigError(f"{self.source}: {full}: unknown key (known: {', '.join(sorted(known))})")

    def table(self, data: Mapping[str, Any], key: str) -> dict[str, Any]:
        v = data.get(key.rsplit(".", 1)[-1], {})
        if not isinstance(v, dict):
            self.fail(key, "a table", v)
        return v

    def named_tables(self, data: Mapping[str, Any], section: str, name_re: re.Pattern[str],
                     expected: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(key, name, table) of each [section.<name>] table, its name checked."""
        out = []
        for name, body in self.table(data, section).items():
            key = f"{section}.{name}"
            if not name_re.match(name):
                self.fail(key, expected, name)
            if not isinstance(body, dict):
                self.fail(key, "a table", body)
            out.append((key, name, body))
        return out

    def string(self, t: Mapping[str, Any], key: str, default: str) -> str:
        v = t.get(key.rsplit(".", 1)[-1], default)
        if not isinstance(v, str) or not v:
            self.fail(key, "a non-empty string", v)
        return v

    def opt_string(self, t: Mapping[str, Any], key: str) -> str | None:
        v = t.get(key.rsplit(".", 1)[-1])
        if v is not None and (not isinstance(v, str) or not v):
            self.fail(key, "a non-empty string", v)
        return v

    def boolean(self, t: Mapping[str, Any], key: str, default: bool) -> bool:
        v = t.get(key.rsplit(".", 1)[-1], default)
        if not isinstance(v, bool):
            self.fail(key, "true or false", v)
        return v

    def integer(self, t: Mapping[str, Any], key: str, default: int, *, minimum: int = 1) -> int:
        v = t.get(key.rsplit(".", 1)[-1], default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            self.fail(key, f"an integer >= {minimum}", v)
        return v

    def number(self, t: Mapping[str, Any], key: str, default: float, *, minimum: float | None = None) -> float:
        """A number > 0, or >= minimum when one is given."""
        v = t.get(key.rsplit(".", 1)[-1], default)
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and (v > 0 if minimum is None else v >= minimum)
        if not ok:
            self.fail(key, "a number > 0" if minimum is None else f"a number >= {minimum:g}", v)
        return float(v)

    def listen(self, t: Mapping[str, Any], key: str, default: Listen) -> Listen:
        v = t.get(key.rsplit(".", 1)[-1])
        if v is None:
            return default
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", v) if isinstance(v, str) else None
        port = int(m.group(2) or m.group(4)) if m else -1
        if not m or not 0 <= port <= 65535:
            self.fail(key, '"host:port" (IPv6 as "[::1]:port")', v)
        assert m is not None
        return Listen(host=m.group(1) or m.group(3), port=port)

    def networks(self, t: Mapping[str, Any], key: str, default: tuple[Any, ...]) -> tuple[Any, ...]:
        v = t.get(key.rsplit(".", 1)[-1])
        if v is None:
            return default
        if not isinstance(v, list):
            self.fail(key, 'a list of addresses or networks like "127.0.0.0/8"', v)
        out = []
        for item in v:
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except (ValueError, TypeError):
                self.fail(key, 'a list of addresses or networks like "127.0.0.0/8"', item)
        return tuple(out)

    def base_url(self, t: Mapping[str, Any], key: str, default: str | None) -> str | None:
        v = t.get(key.rsplit(".", 1)[-1], default)
        if v is None:
            return None
        parts = urlsplit(v) if isinstance(v, str) else None
        if not parts or parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            self.fail(key, "an absolute http(s) URL without query, like https://t.example.com", v)
        return v.rstrip("/")


def _smtp(r: _Reader, t: dict[str, Any]) -> SmtpConfig:
    r.no_unknown(t, "smtp", {"listen", "hostname", "max_message_size", "max_recipients",
                             "config_set_header", "tags_header", "default_configuration_set",
                             "allowed_clients", "users", "accept_any_auth", "auth_required",
                             "tls_cert", "tls_key", "max_connections", "max_connections_per_client",
                             "timeout", "auth_failure_delay", "auth_max_failures_per_connection",
                             "auth_failure_budget", "auth_failure_window", "max_concurrent_data_bytes"})
    d = SmtpConfig()
    header_re = re.compile(r"^[!-9;-~]+$")  # RFC 5322 field-name: printable ASCII but ':'
    cs_header = r.string(t, "smtp.config_set_header", d.config_set_header)
    tags_header = r.string(t, "smtp.tags_header", d.tags_header)
    for key, v in (("smtp.config_set_header", cs_header), ("smtp.tags_header", tags_header)):
        if not header_re.match(v):
            r.fail(key, "a header field name (RFC 5322)", v)
    hostname = r.string(t, "smtp.hostname", d.hostname)
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?", hostname):
        r.fail("smtp.hostname", "a domain name (used in EHLO, Received: and DSNs)", hostname)
    users = t.get("users", {})
    if not isinstance(users, dict) or not all(isinstance(v, str) and v for v in users.values()):
        r.fail("smtp.users", 'a table of user = "password"', "<redacted>")
    accept_any = r.boolean(t, "smtp.accept_any_auth", False)
    auth_required = r.boolean(t, "smtp.auth_required", False)
    if auth_required and not (users or accept_any):
        r.fail("smtp.auth_required", "[smtp.users] or accept_any_auth = true beside it", True)
    tls_cert, tls_key = r.opt_string(t, "smtp.tls_cert"), r.opt_string(t, "smtp.tls_key")
    if (tls_cert is None) != (tls_key is None):
        r.fail("smtp.tls_key" if tls_key is None else "smtp.tls_cert", "tls_cert and tls_key together", None)
    for key, path in (("smtp.tls_cert", tls_cert), ("smtp.tls_key", tls_key)):
        if path is not None and not Path(path).is_file():
            r.fail(key, "a readable PEM file", path)
    max_message_size = r.integer(t, "smtp.max_message_size", d.max_message_size, minimum=1024)
    # At least one message of the largest size must fit.
    data_budget = r.integer(t, "smtp.max_concurrent_data_bytes", 4 * max_message_size, minimum=max_message_size)
    return SmtpConfig(
        users=dict(users), accept_any_auth=accept_any, auth_required=auth_required,
        tls_cert=tls_cert, tls_key=tls_key,
        listen=r.listen(t, "smtp.listen", d.listen),
        hostname=hostname,
        max_message_size=max_message_size,
        max_concurrent_data_bytes=data_budget,
        max_connections=r.integer(t, "smtp.max_connections", d.max_connections, minimum=0),
        max_connections_per_client=r.integer(t, "smtp.max_connections_per_client",
                                             d.max_connections_per_client),
        timeout=r.number(t, "smtp.timeout", d.timeout),
        auth_failure_delay=r.number(t, "smtp.auth_failure_delay", d.auth_failure_delay, minimum=0.0),
        auth_max_failures_per_connection=r.integer(t, "smtp.auth_max_failures_per_connection",
                                                   d.auth_max_failures_per_connection),
        auth_failure_budget=r.integer(t, "smtp.auth_failure_budget", d.auth_failure_budget),
        auth_failure_window=r.number(t, "smtp.auth_failure_window", d.auth_failure_window),
        max_recipients=r.integer(t, "smtp.max_recipients", d.max_recipients),
        config_set_header=cs_header,
        tags_header=tags_header,
        default_configuration_set=r.opt_string(t, "smtp.default_configuration_set"),
        allowed_clients=r.networks(t, "smtp.allowed_clients", d.allowed_clients),
    )


def _storage(r: _Reader, t: dict[str, Any]) -> StorageConfig:
    r.no_unknown(t, "storage", {"path", "retention_days", "stats_retention_days", "body_retention_days"})
    d = StorageConfig()
    body = t.get("body_retention_days", d.body_retention_days)
    if isinstance(body, bool) or not isinstance(body, (int, float)) or body < 0:
        r.fail("storage.body_retention_days", "a number >= 0", body)
    return StorageConfig(
        path=r.string(t, "storage.path", d.path),
        retention_days=r.number(t, "storage.retention_days", d.retention_days),
        stats_retention_days=r.number(t, "storage.stats_retention_days", d.stats_retention_days),
        body_retention_days=float(body),
    )


def _webhook(r: _Reader, t: dict[str, Any]) -> WebhookConfig:
    r.no_unknown(t, "webhook", {"max_retry_seconds", "window"})
    d = WebhookConfig()
    return WebhookConfig(max_retry_seconds=r.number(t, "webhook.max_retry_seconds", d.max_retry_seconds),
                         window=r.integer(t, "webhook.window", d.window))


def _upstream(r: _Reader, t: dict[str, Any]) -> UpstreamConfig:
    r.no_unknown(t, "upstream", {"url", "connections", "timeout", "data_timeout", "max_delivery_seconds",
                                 "retry_first_delay", "retry_max_delay", "tls_ca_file", "tls_verify"})
    ca_file = r.opt_string(t, "upstream.tls_ca_file")
    if ca_file is not None and not Path(ca_file).is_file():
        r.fail("upstream.tls_ca_file", "a readable PEM file", ca_file)
    d = UpstreamConfig()
    url = r.string(t, "upstream.url", d.url)
    common = dict(
        url=url,
        connections=r.integer(t, "upstream.connections", d.connections),
        timeout=r.number(t, "upstream.timeout", d.timeout),
        data_timeout=r.number(t, "upstream.data_timeout", d.data_timeout),
        max_delivery_seconds=r.number(t, "upstream.max_delivery_seconds", d.max_delivery_seconds),
        retry_first_delay=r.number(t, "upstream.retry_first_delay", d.retry_first_delay),
        retry_max_delay=r.number(t, "upstream.retry_max_delay", d.retry_max_delay),
        tls_ca_file=ca_file,
        tls_verify=r.boolean(t, "upstream.tls_verify", True),
    )
    expected = "smtp://host:port, smtp+starttls://user:pass@host:port, smtps://user:pass@host:port or maildir:PATH"
    if url.startswith("maildir:"):
        path = url[len("maildir:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            r.fail("upstream.url", expected, url)
        return UpstreamConfig(scheme="maildir", maildir=path, **common)  # type: ignore[arg-type]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        r.fail("upstream.url", expected, _redact(url))
    if parts.scheme not in ("smtp", "smtp+starttls", "smtps") or not parts.hostname or parts.path not in ("", "/"):
        r.fail("upstream.url", expected, _redact(url))
    if port is None:
        port = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}[parts.scheme]
    if (parts.username is None) != (parts.password is None):
        r.fail("upstream.url", "both a user and a password, or neither", _redact(url))
    return UpstreamConfig(
        scheme=parts.scheme, host=parts.hostname, port=port, maildir=None,  # type: ignore[arg-type]
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        **common,  # type: ignore[arg-type]
    )


def _redact(url: str) -> str:
    """Never echo a password back, even in an error line."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def _tracking(r: _Reader, t: dict[str, Any]) -> TrackingConfig:
    r.no_unknown(t, "tracking", {"listen", "base_url", "window_days", "trusted_proxies", "secrets",
                                 "max_connections", "max_connections_per_client", "header_timeout",
                                 "keepalive_timeout"})
    d = TrackingConfig()
    secrets = t.get("secrets", [])
    if not isinstance(secrets, list) or not all(isinstance(s, str) and len(s) >= 16 for s in secrets):
        r.fail("tracking.secrets", "a list of strings of at least 16 characters", "<redacted>")
    listen = r.listen(t, "tracking.listen", d.listen)
    default_base = f"http://{listen}" if "base_url" not in t else d.base_url
    return TrackingConfig(
        listen=listen,
        base_url=r.base_url(t, "tracking.base_url", default_base) or default_base,
        window_days=r.number(t, "tracking.window_days", d.window_days),
        trusted_proxies=r.networks(t, "tracking.trusted_proxies", ()),
        secrets=tuple(secrets),
        max_connections=r.integer(t, "tracking.max_connections", d.max_connections, minimum=0),
        max_connections_per_client=r.integer(t, "tracking.max_connections_per_client",
                                             d.max_connections_per_client),
        header_timeout=r.number(t, "tracking.header_timeout", d.header_timeout),
        keepalive_timeout=r.number(t, "tracking.keepalive_timeout", d.keepalive_timeout),
    )


def _admin(r: _Reader, t: dict[str, Any], smtp: SmtpConfig, tracking: TrackingConfig) -> AdminConfig:
    r.no_unknown(t, "admin", {"listen", "token"})
    listen = r.listen(t, "admin.listen", AdminConfig().listen)
    # The tracking port faces the internet; the admin pages must never be served there.
    for key, other in (("tracking.listen", tracking.listen), ("smtp.listen", smtp.listen)):
        if _overlap(listen, other):
            r.fail("admin.listen", f"an address other than {key} ({other})", str(listen))
    token = t.get("token")
    if token is not None and (not isinstance(token, str) or len(token) < ADMIN_TOKEN_MIN or token != token.strip()):
        r.fail("admin.token", f"a string of at least {ADMIN_TOKEN_MIN} characters", "<redacted>")
    if token is None and not in_networks(listen.host, LOOPBACK):
        r.fail("admin.token", f"a token of at least {ADMIN_TOKEN_MIN} characters, required since admin.listen "
               f"({listen}) is not loopback", None)
    return AdminConfig(listen=listen, token=token)


def _overlap(a: Listen, b: Listen) -> bool:
    """Whether two listeners would take the same port (a wildcard host takes every address)."""
    wildcard = ("0.0.0.0", "::", "")
    return a.port == b.port and a.port != 0 and (a.host == b.host or a.host in wildcard or b.host in wildcard)


def _configuration_set(r: _Reader, key: str, name: str, t: dict[str, Any]) -> ConfigurationSet:
    r.no_unknown(t, key, {"event_destinations", "tracking_base_url", "https_policy", "return_path_domain",
                          "suppressed_reasons", "list_unsubscribe"})
    policy = t.get("https_policy", "OPTIONAL")
    if policy not in HTTPS_POLICIES:
        r.fail(f"{key}.https_policy", " or ".join(HTTPS_POLICIES), policy)
    dests_raw = t.get("event_destinations", [])
    if not isinstance(dests_raw, list):
        r.fail(f"{key}.event_destinations", "an array of tables [[...event_destinations]]", dests_raw)
    dests: list[EventDestination] = []
    for i, d in enumerate(dests_raw):
        dkey = f"{key}.event_destinations[{i}]"
        if not isinstance(d, dict):
            r.fail(dkey, "a table", d)
        dests.append(_destination(r, dkey, d))
    names = [d.name for d in dests]
    for n in names:
        if names.count(n) > 1:
            r.fail(f"{key}.event_destinations", "unique destination names", n)
    return ConfigurationSet(
        name=name,
        event_destinations=tuple(dests),
        tracking_base_url=r.base_url(t, f"{key}.tracking_base_url", None),
        https_policy=policy,
        return_path_domain=_domain(r, t, f"{key}.return_path_domain"),
        suppressed_reasons=(_reasons(r, t, f"{key}.suppressed_reasons", frozenset())
                            if "suppressed_reasons" in t else None),
        list_unsubscribe=r.boolean(t, f"{key}.list_unsubscribe", False),
    )


def _destination(r: _Reader, key: str, t: dict[str, Any]) -> EventDestination:
    r.no_unknown(t, key, {"name", "type", "enabled", "matching_event_types", "path", "url", "secret",
                          "format", "topic_arn", "mail_destination", "confirm_subscription"})
    name = r.string(t, f"{key}.name", "")
    if not NAME_RE.match(name):
        r.fail(f"{key}.name", "1-64 characters A-Z a-z 0-9 - _ (SES rule)", name)
    kind = t.get("type")
    if kind not in DESTINATION_TYPES:
        r.fail(f"{key}.type", " or ".join(DESTINATION_TYPES), kind)
    types = t.get("matching_event_types")
    if not isinstance(types, list) or not types:
        r.fail(f"{key}.matching_event_types", f"a non-empty list of {', '.join(EVENT_TYPES)}", types)
    assert isinstance(types, list)
    for et in types:
        if et not in EVENT_TYPES:
            r.fail(f"{key}.matching_event_types", f"event types from {', '.join(EVENT_TYPES)}", et)
    path = url = secret = topic_arn = None
    fmt, mail_destination = "ses", "message"
    if kind == "file":
        path = r.string(t, f"{key}.path", "")
    elif kind == "webhook":
        url = r.string(t, f"{key}.url", "")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            r.fail(f"{key}.url", "an absolute http(s) URL", url)
        secret = r.opt_string(t, f"{key}.secret")
        fmt = t.get("format", fmt)
        if fmt not in WEBHOOK_FORMATS:
            r.fail(f"{key}.format", " or ".join(WEBHOOK_FORMATS), fmt)
        mail_destination = t.get("mail_destination", mail_destination)
        if mail_destination not in MAIL_DESTINATIONS:
            r.fail(f"{key}.mail_destination", " or ".join(MAIL_DESTINATIONS), mail_destination)
        topic_arn = r.opt_string(t, f"{key}.topic_arn")
        if topic_arn is not None and not TOPIC_ARN_RE.match(topic_arn):
            r.fail(f"{key}.topic_arn", "an SNS topic ARN like arn:aws:sns:us-east-1:123456789012:ses-events",
                   topic_arn)
        for k in ("topic_arn", "confirm_subscription"):
            if t.get(k) not in (None, False) and fmt != "sns":
                raise ConfigError(f'{r.source}: {key}.{k}: used only with format = "sns"')
    used = {"confirm_subscription": url, "path": path, "url": url, "secret": secret, "format": url, "topic_arn": topic_arn,
            "mail_destination": url}
    for k in used:
        if k in t and used[k] is None:
            raise ConfigError(f"{r.source}: {key}.{k}: not used by type {kind!r}")
    return EventDestination(
        name=name, type=kind, enabled=r.boolean(t, f"{key}.enabled", True),  # type: ignore[arg-type]
        matching_event_types=frozenset(types), path=path, url=url, secret=secret,
        format=fmt, topic_arn=topic_arn, mail_destination=mail_destination,
        confirm_subscription=r.boolean(t, f"{key}.confirm_subscription", False),
    )
