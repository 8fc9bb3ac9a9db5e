"""Keeping secrets out of messages, logs and artifacts.

Anything quoted from a server (an error body, a malformed reply) and any URL shown in a message
or recorded in a manifest goes through :func:`redact` / :func:`safe_url` first: servers and
proxies sometimes echo the request's headers or the key, and users put credentials in URLs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["redact", "safe_url"]


#: what API keys and tokens look like (OpenAI, Hugging Face, bearer headers, key=... pairs)
_SECRET_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-*]{6,}|hf_[A-Za-z0-9]{6,}|(?i:bearer)\s+\S+"
    r"|(?i:api[_-]?key|token|secret|password)[\"']?\s*[:=]\s*[\"']?[^\s\"',}&]+)"
)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with the given secret values and anything shaped like a key replaced by
    ``[redacted]``: server bodies sometimes echo the request's headers or the key."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return _SECRET_PATTERNS.sub("[redacted]", text)


def safe_url(url: str) -> str:
    """``url`` as errors, logs and manifests may show it: a user and password in it
    (``https://user:key@host``) and key-like query values are replaced by ``[redacted]``."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "[redacted]@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{k}=[redacted]" if v and (_SECRET_QUERY.search(k) or redact(v) != v) else f"{k}={v}"
        if v else k
        for k, _, v in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit((parts.scheme, netloc, redact(parts.path), query, redact(parts.fragment)))


#: query parameters that carry credentials
_SECRET_QUERY = re.compile(r"key|token|secret|password|auth|sig", re.IGNORECASE)
