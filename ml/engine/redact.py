"""Credentials out of anything we print or log: `https://user:token@host/...` -> `https://***@host/...`.

Tracking URIs and package index URLs may carry a user and token (MLflow's basic auth, a private index), and
whatever the engine prints ends up in CI logs, run summaries and result.json files. Every place that shows a
URL passes it (or a whole message that may quote one, such as an HTTP client's exception) through redact().
"""

from __future__ import annotations

import re

__all__ = ["redact"]

# scheme://userinfo@ -- userinfo is everything up to the first @ that comes before the next / ? # or space.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/?#@\s]+)@")
# Query parameters that carry secrets in presigned or token-in-URL schemes.
_SECRET_QUERY = re.compile(r"(?P<key>[?&](?:access_token|token|password|passwd|secret|api_key|apikey|sig|signature"
                           r"|X-Amz-Signature|X-Amz-Credential|X-Goog-Signature)=)[^&#\s]+", re.IGNORECASE)


def redact(text: object) -> str:
    """`text` (a URL or a message quoting URLs) with the user info and secret query values replaced by ***."""
    return _SECRET_QUERY.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>***@", str(text)))
