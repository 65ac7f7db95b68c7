# One row of a recipient's timeline from an SES event record: when, what, and the
# details a person looks for (the reply, the IP and user agent, the link clicked).
from __future__ import annotations

from typing import Any


def row(record: dict[str, Any]) -> dict[str, Any]:
    kind = str(record.get("eventType", ""))
    child = next((v for k, v in record.items() if k not in ("eventType", "mail") and isinstance(v, dict)), {})
    out: dict[str, Any] = {
        "type": kind,
        "time": child.get("timestamp") or record.get("mail", {}).get("timestamp", ""),
        "ip": child.get("ipAddress", ""),
        "user_agent": child.get("userAgent", ""),
        "link": child.get("link", ""),
        "detail": _detail(kind, child),
    }
    return out


def _detail(kind: str, child: dict[str, Any]) -> str:
    if kind == "Delivery":
        return str(child.get("smtpResponse", ""))
    if kind == "Bounce":
        codes = [r.get("diagnosticCode", "") for r in child.get("bouncedRecipients", [])]
        return " ".join(filter(None, [f"{child.get('bounceType', '')}/{child.get('bounceSubType', '')}", *codes[:1]]))
    if kind == "DeliveryDelay":
        codes = [r.get("diagnosticCode", "") for r in child.get("delayedRecipients", [])]
        return " ".join(filter(None, [str(child.get("delayType", "")), *codes[:1]]))
    if kind == "Complaint":
        return str(child.get("complaintFeedbackType", ""))
    if kind == "Reject":
        return str(child.get("reason", ""))
    if kind == "Rendering Failure":
        return str(child.get("errorMessage", ""))
    if kind == "Click":
        tags = child.get("linkTags") or {}
        return ", ".join(f"{name}={','.join(values)}" for name, values in sorted(tags.items()))
    return ""
