"""Masking secrets in anything tessq writes: log records (every tessq handler) and error messages.

One function, `redact(text)`, used by the log formatter (logs.py) and by messages that echo a URL
(backends.py): request signatures and tokens, Authorization headers, AWS secret keys, passwords in
URLs, and the literal values of the AWS secret variables of this process's environment.
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"
# Names whose value is a secret, in a header dict repr ('X-Amz-Security-Token': b'...'), a query string
# (X-Amz-Signature=...), an Authorization value (Credential=..., Signature=...) or a config dump.
SECRET_NAMES = (
    r"X-Amz-Security-Token|X-Amz-Credential|X-Amz-Signature|Authorization|Credential|Signature"
    r"|AWSAccessKeyId|aws_secret_access_key|aws_session_token|aws_security_token|SecretAccessKey|SessionToken"
    r"|password|passwd"
)
_NAMED = re.compile(
    rf"(?i)\b({SECRET_NAMES})(['\"]?\s*[:=]\s*)"
    r"(?:(b?)(['\"])(?:(?!\4).)*\4"  # a quoted value: the whole quoted string
    r"|(?!b?['\"])[^\s&'\",;}}<>)]+)"  # an unquoted one: up to the next separator
)
# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@'\"]*:)[^\s/@'\"]+@")
# Values read from the environment are masked wherever they appear; short ones (the tests' 'testing')
# would mask ordinary words.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
MIN_LITERAL = 8


def _named(match: re.Match[str]) -> str:
    quote = match.group(4)
    value = f"{match.group(3)}{quote}{MASK}{quote}" if quote else MASK
    return f"{match.group(1)}{match.group(2)}{value}"


def redact(text: str) -> str:
    """`text` with every secret it holds replaced by ***."""
    if not text:
        return text
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= MIN_LITERAL and value in text:
            text = text.replace(value, MASK)
    text = _NAMED.sub(_named, text)
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", text)


def redact_url(url: str) -> str:
    """A URL fit for a message: its password (if any) masked."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", url)


# Characters that would start a new line (or rewrite the current one) in a log file or a terminal.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    char = match.group(0)
    return {"\n": "\\n", "\r": "\\r"}.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


def escape_controls(text: str) -> str:
    """`text` with line breaks and other control characters written as escapes (a newline becomes the two
    characters \\n): a file name holding a newline cannot forge a second log line. Tabs are kept."""
    return _CONTROL.sub(_escaped, text) if text else text


class RedactingFormatter(logging.Formatter):
    """A Formatter whose whole output (message, arguments, traceback) goes through `redact`, and whose message
    (the log line itself, not a traceback below it) has its control characters escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactFilter(logging.Filter):
    """For handlers tessq does not format itself: masks the record's message and arguments in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is logging's to report, not ours
            return True
        masked = escape_controls(redact(message))
        if masked != message:
            record.msg, record.args = masked, None
        return True
