# SMTP intake: the handler (policy: who may send what), the session (aiosmtpd's
# protocol with relay's limits), the listener, AUTH defences and address checks.
from __future__ import annotations

from relay.smtp.handler import IntakeHandler
from relay.smtp.server import SmtpServer

__all__ = ["IntakeHandler", "SmtpServer"]
