# Query parameters of the API and the pages, read into relay.stats arguments. Every
# bad value becomes one ParamError line (400 in the API). configuration_set: absent
# means every set, empty means mail without a set (stats.NO_SET), else a set's name.
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from relay import stats
from relay.events.records import EVENT_TYPE_KEYS


class ParamError(ValueError):
    """A query parameter the API cannot use; str() is one line naming it."""


def known(query: Mapping[str, str], names: set[str]) -> None:
    for name in query:
        if name not in names:
            raise ParamError(f"unknown parameter {name!r} (known: {', '.join(sorted(names))})")


def configuration_set(query: Mapping[str, str]) -> str | None:
    value = query.get("configuration_set")
    return None if value is None else value.strip()


def period(query: Mapping[str, str], now: datetime) -> stats.Period:
    for name in ("since", "until"):
        time(query, name, now)  # an error that names the parameter
    try:
        return stats.parse_period(query.get("since") or None, query.get("until") or None, now=now)
    except stats.PeriodError as e:
        raise ParamError(str(e)) from None


def time(query: Mapping[str, str], name: str, now: datetime) -> datetime | None:
    value = query.get(name)
    if not value:
        return None
    try:
        return stats.parse_time(value, now=now)
    except stats.PeriodError as e:
        raise ParamError(f"{name}: {e}") from None


def by(query: Mapping[str, str]) -> str | None:
    value = query.get("by") or None
    if value not in (None, "hour", "day"):
        raise ParamError(f"by must be hour or day, got {value!r}")
    return value


def tag(query: Mapping[str, str]) -> tuple[str, str] | None:
    value = query.get("tag")
    if not value:
        return None
    name, sep, tag_value = value.partition("=")
    if not sep or not name or not tag_value:
        raise ParamError(f"tag must be NAME=VALUE, got {value!r}")
    return name, tag_value


def integer(query: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int = 10_000) -> int:
    value = query.get(name)
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        n = minimum - 1
    if not minimum <= n <= maximum:
        raise ParamError(f"{name} must be an integer from {minimum} to {maximum}, got {value!r}")
    return n


def types(query: Mapping[str, str]) -> tuple[str, ...]:
    """`type=open,click` (the keys) or SES eventTypes (Open, Click)."""
    value = query.get("type")
    if not value:
        return ()
    allowed = set(EVENT_TYPE_KEYS) | set(EVENT_TYPE_KEYS.values())
    out = tuple(t.strip() for t in value.split(",") if t.strip())
    for t in out:
        if t not in allowed:
            raise ParamError(f"type: unknown event type {t!r} (known: {', '.join(EVENT_TYPE_KEYS.values())})")
    return out


def stats_args(query: Mapping[str, str], now: datetime) -> dict[str, Any]:
    """The keyword arguments of stats.stats() for /api/stats and the dashboard."""
    return {"configuration_set": configuration_set(query), "period": period(query, now),
            "by": by(query), "tag": tag(query)}
