"""Checks for strings that leave the recipe for a Dockerfile, a shell, a URL or a log.

Each check returns the problem as a short phrase (or None) so the recipe's validators can put it
behind `file:line: field:`, and never repeats the value itself: a URL may carry a secret, and any
value may be megabytes long.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

# Query parameters that carry a credential: presigned S3 URLs, hub/CDN tokens, API keys.
CREDENTIAL_PARAMS = frozenset(
    {
        "token",
        "access_token",
        "auth",
        "api_key",
        "apikey",
        "key",
        "password",
        "secret",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "awsaccesskeyid",
        "x-goog-signature",
        "x-goog-credential",
    }
)

CREDENTIAL_ADVICE = (
    "keep credentials out of URLs: S3 keys come from boto3's chain (AWS_* variables, a profile), "
    "a hub or download token from the environment variable named by token_env"
)

# The OCI/distribution reference grammar (github.com/distribution/reference, regexp.go).
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
REFERENCE_RE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?")
NAME_RE = re.compile(_NAME)
MAX_NAME_LEN = 255


def all_match(values: tuple[str, ...], pattern: str, what: str) -> tuple[str, ...]:
    """`values` when each one matches `pattern` whole; else a ValueError naming the first that does
    not (clipped: a recipe's value is never echoed unbounded)."""
    for value in values:
        if not re.fullmatch(pattern, value):
            raise ValueError(f"not {what}: {clip(value)}")
    return values


def clip(value: object, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters: what an error message may quote of user input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def url_credentials(url: str) -> str | None:
    """What credential a URL carries (user info, or a credential query parameter), else None."""
    try:
        parts = urlsplit(url)
        has_userinfo = parts.username is not None or parts.password is not None
    except ValueError:
        return "is not a valid URL"
    if has_userinfo or "@" in parts.netloc:
        return "carries a user name or password"
    for key, _ in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in CREDENTIAL_PARAMS:
            return f"carries a credential in its query ({key[:40]}=)"
    return None


def url_problem(url: str) -> str | None:
    """A refusal for a URL given in a recipe, with the advice, or None when it is fine."""
    found = url_credentials(url)
    return f"the URL {found}; {CREDENTIAL_ADVICE}" if found else None


def image_reference_problem(ref: str, *, tag_allowed: bool = True) -> str | None:
    """None when `ref` follows the OCI reference grammar (a repository alone when not `tag_allowed`)."""
    pattern = REFERENCE_RE if tag_allowed else NAME_RE
    match = pattern.fullmatch(ref)
    if match is None:
        what = "image reference" if tag_allowed else "image repository"
        return f"not a valid {what} (registry/name[:tag][@digest], lower case, no spaces): {clip(ref)}"
    name = match.group("name") if tag_allowed else ref
    if len(name) > MAX_NAME_LEN:
        return f"image name longer than {MAX_NAME_LEN} characters"
    return None
