# Inbound feedback: DSN (RFC 3464) and ARF (RFC 5965) report parsing into typed values, pure.
