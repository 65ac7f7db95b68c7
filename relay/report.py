# Pure: the read side's documents (relay.stats) as aligned text tables for people —
# `relay stats`, `relay messages`, `relay message ID`. Machines get the documents
# themselves (--json); nothing here queries or prints.
from __future__ import annotations

from typing import Any, Mapping, Sequence

from relay.events.records import EVENT_TYPE_KEYS

# counts key -> SES eventType, for labels ("deliveryDelay" -> "DeliveryDelay")
EVENT_NAMES = {key: name for name, key in EVENT_TYPE_KEYS.items()}
# Counts in the order mail moves: sent, then what the upstream said, then engagement.
FUNNEL = ("send", "delivery", "deliveryDelay", "bounce", "reject", "complaint", "renderingFailure",
          "open", "click", "subscription")
_RATES = (("delivery", "Delivery"), ("bounce", "Bounce"), ("complaint", "Complaint"),
          ("open", "Open"), ("click", "Click"))


def clean(value: Any) -> str:
    """A cell as text, control characters escaped: user agents, links and subjects come
    from strangers and must not drive the terminal (ANSI escapes, carriage returns)."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    """Columns padded to their widest cell; `align` has one '<' or '>' per column
    (default: '<' for the first, '>' for the rest: labels then numbers)."""
    cells = [[clean(c) for c in row] for row in [header, *rows]]
    ncols = len(header)
    align = align or "<" + ">" * (ncols - 1)
    widths = [max(len(r[i]) for r in cells) for i in range(ncols)]
    lines = []
    for row in cells:
        parts = [c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(row, widths, align, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return lines


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def stats_text(doc: Mapping[str, Any], *, tag: tuple[str, str] | None = None) -> str:
    """The `relay stats` document as tables: counts, recipients and unique engagement,
    rates, top links, link tags, and the series when there is one."""
    cset = doc["configuration_set"]
    scope = "all configuration sets" if cset is None else ("mail without a configuration set" if cset == ""
                                                           else f"configuration set {cset}")
    out = [f"{doc['since']} to {doc['until']}, {scope}" + (f", tag {tag[0]}={tag[1]}" if tag else ""), ""]
    counts = doc["counts"]
    keys = [k for k in FUNNEL if k in counts] + [k for k in counts if k not in FUNNEL]
    out += table(["Event", "Count"], [[EVENT_NAMES.get(k) or k, counts[k]] for k in keys])
    out.append("")
    out += table(["Recipients", "Count"], [["Sent to", doc["recipients"]], ["Opened (unique)", doc["unique"]["open"]],
                                           ["Clicked (unique)", doc["unique"]["click"]]])
    out.append("")
    out += table(["Rate", "Value"], [[label, percent(doc["rates"][k])] for k, label in _RATES])
    out.append("")
    if doc.get("webhook_dead_letters"):
        out += [f"Webhook events dead-lettered: {doc['webhook_dead_letters']} (relay webhook dead-letters)", ""]
    if doc["top_links"]:
        out += table(["Top link", "Clicks", "Unique"],
                     [[x["link"], x["clicks"], x["unique_clicks"]] for x in doc["top_links"]])
    else:
        out.append("Top links: none clicked")
    out.append("")
    if doc["link_tags"]:
        out += table(["Link tag", "Clicks"], [[f"{x['name']}={x['value']}", x["clicks"]] for x in doc["link_tags"]])
    else:
        out.append("Link tags: none clicked")
    if "series" in doc:
        out.append("")
        out += table(["Start", *(EVENT_NAMES.get(k) or k for k in keys)],
                     [[b["start"], *(b["counts"].get(k, 0) for k in keys)] for b in doc["series"]])
    return "\n".join(out)


def messages_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """`relay messages`: one line per message, newest first."""
    if not rows:
        return "No messages."
    body = []
    for m in rows:
        states = m.get("states", {})
        body.append([m["timestamp"], m["message_id"], _set_name(m.get("configuration_set")), m.get("source") or "<>",
                     m["recipients"], states.get("delivered", 0), states.get("bounced", 0),
                     states.get("pending", 0), m.get("opens", 0), m.get("clicks", 0), m.get("subject") or ""])
    return "\n".join(table(["Time", "Message ID", "Set", "From", "Rcpts", "Delivered", "Bounced", "Pending",
                            "Opens", "Clicks", "Subject"], body, "<<<<>>>>>><"))


def message_text(doc: Mapping[str, Any]) -> str:
    """`relay message ID`: the mail object's summary, then each recipient's timeline."""
    mail = doc["message"]
    headers = mail.get("commonHeaders", {})
    tags = mail.get("tags", {})
    cset = (tags.get("ses:configuration-set") or [None])[0]
    own_tags = [f"{k}={v}" for k, vs in tags.items() if not k.startswith("ses:") for v in vs]
    out = table(["Message", mail["messageId"]], [
        ["Sent", mail.get("timestamp", "")],
        ["From", mail.get("source") or "<>"],
        ["Subject", headers.get("subject", "")],
        ["Configuration set", _set_name(cset)],
        ["Tags", ", ".join(own_tags) or "-"],
    ], "<<")
    for r in doc["recipients"]:
        out += ["", f"{clean(r['address'])}: {r['state']}"]
        rows = [timeline_row(e) for e in r["events"]]
        out += ["  " + line for line in table(["Time", "Event", "Details"], rows, "<<<")]
    return "\n".join(out)


def timeline_row(record: Mapping[str, Any]) -> list[str]:
    """[time, event type, details] of one SES record."""
    kind = record["eventType"]
    key = EVENT_TYPE_KEYS.get(kind, "")
    obj = record.get("failure" if kind == "Rendering Failure" else key) or {}
    when = obj.get("timestamp") or record["mail"].get("timestamp", "")
    details: list[str] = []
    if kind == "Delivery":
        details = [obj.get("smtpResponse", "")]
    elif kind == "DeliveryDelay":
        delayed = (obj.get("delayedRecipients") or [{}])[0]
        details = [obj.get("delayType", ""), _diagnostic(delayed.get("diagnosticCode", "")),
                   f"expires {obj.get('expirationTime', '')}"]
    elif kind == "Bounce":
        bounced = (obj.get("bouncedRecipients") or [{}])[0]
        details = [f"{obj.get('bounceType', '')}/{obj.get('bounceSubType', '')}",
                   _diagnostic(bounced.get("diagnosticCode", ""))]
    elif kind == "Open":
        details = [obj.get("ipAddress", ""), obj.get("userAgent", "")]
    elif kind == "Click":
        link_tags = ", ".join(f"{k}={v}" for k, vs in (obj.get("linkTags") or {}).items() for v in vs)
        details = [obj.get("link", ""), obj.get("ipAddress", ""), obj.get("userAgent", ""),
                   f"tags {link_tags}" if link_tags else ""]
    elif kind == "Rendering Failure":
        details = [obj.get("errorMessage", "")]
    elif kind == "Complaint":
        details = [obj.get("complaintFeedbackType", "")]
    elif kind == "Reject":
        details = [obj.get("reason", "")]
    return [when, kind, "  ".join(clean(d) for d in details if d)]


def _diagnostic(code: str) -> str:
    return code.removeprefix("smtp; ")


def _set_name(cset: str | None) -> str:
    return "-" if not cset else cset


def dead_letters_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """`relay webhook dead-letters`: one line per event an endpoint never took."""
    if not rows:
        return "No dead letters."
    return "\n".join(table(["Dead since", "Destination", "Event", "Message", "Attempts", "Last refusal"],
                           [[r["dead_at"], r["destination"], r["event_id"], r["message_id"], r["attempts"], r["reason"]]
                            for r in rows], "<<<<><"))
