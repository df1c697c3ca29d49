"""One way to keep secret values out of logs, events and stored step logs."""
REDACTED = "[redacted]"


def redact(text, secret_values):
    """`text` with every secret value replaced by "[redacted]", longest value first (a secret
    that contains another is replaced whole). Empty values are ignored."""
    for value in sorted({v for v in secret_values if v}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text
