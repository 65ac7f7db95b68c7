# Every SMTP reply relay's intake sends itself, named once (RFC 5321 §4.2 codes,
# RFC 3463 enhanced status codes; wording after Postfix where it has one).
from __future__ import annotations

# At connect (the greeting), then the connection is closed.
REFUSED_CLIENT = "554 5.7.1 Access denied: client {ip} is not in smtp.allowed_clients"
TOO_MANY_FROM_CLIENT = "421 4.7.0 Too many connections from {ip}"  # smtpd_client_connection_count_limit
SERVER_BUSY = "421 4.7.0 Server busy, too many connections"
TIMEOUT = "421 4.4.2 {host} Error: timeout exceeded"  # Postfix smtpd_timeout

# MAIL / RCPT.
NOT_ALLOWED = "550 5.7.1 Relaying denied: client {ip} is not in smtp.allowed_clients"
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients (at most {n} per message)"
NO_STORAGE = "451 4.3.1 Insufficient system storage, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
AUTH_REQUIRED = "530 5.7.0 Authentication required"

# DATA.
DATA_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"
LINE_TOO_LONG = "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)"
TOO_MUCH_DATA = "552 5.3.4 Message size exceeds fixed maximum message size"
TEMP_FAILURE = "451 4.3.0 Temporary service failure"

# AUTH (RFC 4954).
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_IN_TRANSACTION = "503 5.5.1 AUTH not permitted during a mail transaction"  # RFC 4954 §4
AUTH_TOO_MANY = "421 4.7.0 Too many authentication failures"
