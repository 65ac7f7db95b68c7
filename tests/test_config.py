# Config: TOML -> dataclasses; every error is one line naming the file and key.
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay import config as cfg
from relay.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_valid() -> None:
    c = cfg.load(ROOT / "config.example.toml")
    assert c.smtp.listen.port == 2525
    assert c.configuration_sets["default"].tracks_clicks
    assert c.configuration_sets["default"].event_destinations[2].enabled is False


def test_embedded_default() -> None:
    c = cfg.default_config()
    assert str(c.smtp.listen) == "127.0.0.1:2525"
    assert str(c.tracking.listen) == "127.0.0.1:8080"
    assert c.tracking.base_url == "http://127.0.0.1:8080"
    assert c.upstream.scheme == "maildir" and c.upstream.maildir == "./outbox"
    assert c.storage.path == "./relay.db"
    assert c.smtp.default_configuration_set == "default"
    default = c.configuration_sets["default"]
    assert default.tracks_opens and default.tracks_clicks
    assert default.event_destinations[0].matching_event_types == frozenset(cfg.EVENT_TYPES)


@pytest.mark.parametrize("url, scheme, host, port, user", [
    ("smtp://127.0.0.1:2526", "smtp", "127.0.0.1", 2526, None),
    ("smtp+starttls://u%40x:p%3Aw@127.0.0.1:587", "smtp+starttls", "127.0.0.1", 587, "u@x"),
    ("smtps://u:p@127.0.0.1", "smtps", "127.0.0.1", 465, "u"),
    ("maildir:/tmp/box", "maildir", "", 0, None),
])
def test_upstream_urls(url: str, scheme: str, host: str, port: int, user: str | None) -> None:
    u = cfg.parse({"upstream": {"url": url}}).upstream
    assert (u.scheme, u.host, u.port, u.username) == (scheme, host, port, user)


def test_password_never_in_repr_or_safe_url() -> None:
    u = cfg.parse({"upstream": {"url": "smtps://user:hunter2secret@127.0.0.1:465"}}).upstream
    assert u.password == "hunter2secret"
    assert "hunter2secret" not in repr(u) and "hunter2secret" not in u.safe_url


def _hook(**kw: object) -> dict:
    return {"name": "d", "type": "webhook", "url": "http://127.0.0.1/h", "matching_event_types": ["send"], **kw}


def test_webhook_options() -> None:
    c = cfg.parse({"webhook": {"max_retry_seconds": 60, "window": 8}, "configuration_sets": {"s": {
        "event_destinations": [_hook(format="sns", topic_arn="arn:aws:sns:us-east-1:123456789012:ses-events",
                                     mail_destination="recipient", confirm_subscription=True)]}}})
    d = c.configuration_sets["s"].event_destinations[0]
    assert (d.format, d.topic_arn, d.mail_destination) == ("sns", "arn:aws:sns:us-east-1:123456789012:ses-events",
                                                         "recipient")
    assert (c.webhook.max_retry_seconds, c.webhook.window) == (60.0, 8) and d.confirm_subscription
    plain = cfg.parse({"configuration_sets": {"s": {"event_destinations": [_hook()]}}})
    d = plain.configuration_sets["s"].event_destinations[0]
    assert (d.format, d.topic_arn, d.mail_destination) == ("ses", None, "message")
    assert plain.webhook.max_retry_seconds == 3 * 86400


@pytest.mark.parametrize("data, key", [
    ({"smtp": {"listen": "nope"}}, "smtp.listen"),
    ({"smtp": {"listen": "127.0.0.1:99999"}}, "smtp.listen"),
    ({"smtp": {"max_message_size": "big"}}, "smtp.max_message_size"),
    ({"smtp": {"default_configuration_set": "missing"}}, "smtp.default_configuration_set"),
    ({"smtp": {"allowed_clients": ["not-an-ip"]}}, "smtp.allowed_clients"),
    ({"smtp": {"bogus": 1}}, "smtp.bogus"),
    ({"smtp": {"hostname": "two words"}}, "smtp.hostname"),
    ({"smtp": {"auth_required": True}}, "smtp.auth_required"),
    ({"smtp": {"users": {"app": 5}}}, "smtp.users"),
    ({"smtp": {"tls_cert": "/nonexistent/cert.pem"}}, "smtp.tls_key"),
    ({"smtp": {"tls_cert": "/nonexistent/c.pem", "tls_key": "/nonexistent/k.pem"}}, "smtp.tls_cert"),
    ({"upstream": {"url": "http://127.0.0.1"}}, "upstream.url"),
    ({"upstream": {"url": "smtp://u@127.0.0.1"}}, "upstream.url"),
    ({"upstream": {"connections": 0}}, "upstream.connections"),
    ({"tracking": {"base_url": "ftp://x"}}, "tracking.base_url"),
    ({"tracking": {"window_days": -1}}, "tracking.window_days"),
    ({"tracking": {"secrets": ["short"]}}, "tracking.secrets"),
    ({"configuration_sets": {"bad name": {}}}, "configuration_sets.bad name"),
    ({"configuration_sets": {"s": {"https_policy": "SOMETIMES"}}}, "configuration_sets.s.https_policy"),
    ({"configuration_sets": {"s": {"event_destinations": [{"name": "d", "type": "kafka", "matching_event_types": ["send"]}]}}},
     "configuration_sets.s.event_destinations[0].type"),
    ({"configuration_sets": {"s": {"event_destinations": [{"name": "d", "type": "sqlite", "matching_event_types": ["opens"]}]}}},
     "configuration_sets.s.event_destinations[0].matching_event_types"),
    ({"configuration_sets": {"s": {"event_destinations": [{"name": "d", "type": "file", "matching_event_types": ["send"]}]}}},
     "configuration_sets.s.event_destinations[0].path"),
    ({"configuration_sets": {"s": {"event_destinations": [{"name": "d", "type": "webhook", "url": "nope", "matching_event_types": ["send"]}]}}},
     "configuration_sets.s.event_destinations[0].url"),
    ({"configuration_sets": {"s": {"event_destinations": [_hook(format="json")]}}},
     "configuration_sets.s.event_destinations[0].format"),
    ({"configuration_sets": {"s": {"event_destinations": [_hook(mail_destination="each")]}}},
     "configuration_sets.s.event_destinations[0].mail_destination"),
    ({"configuration_sets": {"s": {"event_destinations": [_hook(format="sns", topic_arn="my-topic")]}}},
     "configuration_sets.s.event_destinations[0].topic_arn"),
    ({"configuration_sets": {"s": {"event_destinations": [_hook(topic_arn="arn:aws:sns:us-east-1:1:t")]}}},
     "configuration_sets.s.event_destinations[0].topic_arn"),  # sns only
    ({"configuration_sets": {"s": {"event_destinations": [
        {"name": "d", "type": "file", "path": "x", "format": "sns", "matching_event_types": ["send"]}]}}},
     "configuration_sets.s.event_destinations[0].format"),
    ({"configuration_sets": {"s": {"event_destinations": [_hook(confirm_subscription=True)]}}},
     "configuration_sets.s.event_destinations[0].confirm_subscription"),  # sns only
    ({"configuration_sets": {"s": {"event_destinations": [_hook(format="sns", confirm_subscription="yes")]}}},
     "configuration_sets.s.event_destinations[0].confirm_subscription"),
    ({"webhook": {"max_retry_seconds": 0}}, "webhook.max_retry_seconds"),
    ({"webhook": {"window": 0}}, "webhook.window"),
    ({"webhook": {"confirm": True}}, "webhook.confirm"),
])
def test_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        cfg.parse(data, source="relay.toml")
    msg = str(e.value)
    assert msg.startswith(f"relay.toml: {key}:"), msg
    assert "\n" not in msg


def test_password_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as e:
        cfg.parse({"upstream": {"url": "smtp://user:topsecret@127.0.0.1/path"}})
    assert "topsecret" not in str(e.value)


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[smtp\nlisten=")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        cfg.load(p)


def test_check_config_cli(tmp_path: Path) -> None:
    good = subprocess.run([sys.executable, "-m", "relay.cli", "check-config", "--config",
                           str(ROOT / "config.example.toml")], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and "OK" in good.stdout
    bad = tmp_path / "relay.toml"
    bad.write_text('[upstream]\nurl = "gopher://x"\n')
    r = subprocess.run([sys.executable, "-m", "relay.cli", "check-config", "--config", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "upstream.url" in lines[0] and str(bad) in lines[0]


def test_serve_with_bad_config_exits_before_binding(tmp_path: Path) -> None:
    bad = tmp_path / "relay.toml"
    bad.write_text('[smtp]\nlisten = "127.0.0.1:2525"\nmax_recipients = "many"\n')
    r = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "--config", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "smtp.max_recipients" in r.stderr


def test_serve_port_taken_one_line_nonzero(tmp_path: Path) -> None:
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "relay.toml"
        conf.write_text(f'[smtp]\nlisten = "127.0.0.1:{port}"\n[tracking]\nlisten = "127.0.0.1:0"\n'
                        f'[storage]\npath = "{tmp_path / "r.db"}"\n')
        r = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "--config", str(conf)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "relay: cannot start:" in r.stderr and str(port) in r.stderr


def test_upstream_tls_options() -> None:
    u = cfg.parse({"upstream": {"url": "smtps://u:p@127.0.0.1", "tls_verify": False}}).upstream
    assert u.tls_verify is False and u.tls_ca_file is None
    with pytest.raises(ConfigError, match=r"upstream\.tls_ca_file"):
        cfg.parse({"upstream": {"tls_ca_file": "/nonexistent/ca.pem"}})


def test_startup_warnings_for_likely_mistakes() -> None:
    assert cfg.warnings(cfg.default_config()) == []
    exposed = cfg.parse({"smtp": {"listen": "0.0.0.0:2525", "accept_any_auth": True}})
    lines = cfg.warnings(exposed)
    assert len(lines) == 2 and "allowed_clients" in lines[0] and "without TLS" in lines[1]
    ok = cfg.parse({"smtp": {"listen": "0.0.0.0:2525", "allowed_clients": ["127.0.0.1"]}})
    assert cfg.warnings(ok) == []


def test_warning_for_more_recipients_than_measured() -> None:
    assert cfg.warnings(cfg.parse({"smtp": {"max_recipients": 10_000}})) == []
    lines = cfg.warnings(cfg.parse({"smtp": {"max_recipients": 50_000}}))
    assert len(lines) == 1 and "smtp.max_recipients is 50000" in lines[0] and "10,000" in lines[0]


def test_upstream_data_timeout() -> None:
    assert cfg.parse({}).upstream.data_timeout == 600.0
    assert cfg.parse({"upstream": {"data_timeout": 30}}).upstream.data_timeout == 30.0
    with pytest.raises(ConfigError, match=r"upstream\.data_timeout: expected a number > 0"):
        cfg.parse({"upstream": {"data_timeout": 0}})


def test_feedback_settings_and_their_warnings(tmp_path) -> None:
    import pytest

    from relay.config import ConfigError, parse, warnings
    cfg = parse({"feedback": {"return_path_domain": "Bounces.Example.com", "listen": "127.0.0.1:2526",
                              "addresses": ["FBL@example.com"]},
                 "configuration_sets": {"a": {"return_path_domain": "b.example.net", "suppressed_reasons": []}}})
    assert cfg.return_path_domain("a") == "b.example.net" and cfg.return_path_domain(None) == "bounces.example.com"
    assert cfg.feedback.addresses == ("fbl@example.com",)
    assert cfg.suppressed_reasons("a") == frozenset() and cfg.suppressed_reasons(None) == {"bounce", "complaint"}
    assert warnings(cfg) == []
    assert any("refuse every recipient" in w for w in warnings(parse({"feedback": {"listen": "127.0.0.1:2526"}})))
    assert any("feedback.listen is not" in w for w in warnings(parse({"feedback": {"return_path_domain": "b.example.com"}})))
    for bad, key in (({"feedback": {"return_path_domain": "not a domain"}}, "feedback.return_path_domain"),
                     ({"feedback": {"listen": "127.0.0.1:2525"}}, "feedback.listen"),  # smtp.listen's
                     ({"feedback": {"addresses": ["nobody"]}}, "feedback.addresses"),
                     ({"feedback": {"max_message_size": 10}}, "feedback.max_message_size"),
                     ({"feedback": {"bogus": 1}}, "feedback.bogus"),
                     ({"suppression": {"reasons": ["spam"]}}, "suppression.reasons"),
                     ({"configuration_sets": {"a": {"suppressed_reasons": "bounce"}}},
                      "configuration_sets.a.suppressed_reasons"),
                     ({"configuration_sets": {"a": {"return_path_domain": "-x-"}}},
                      "configuration_sets.a.return_path_domain")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse(bad)
