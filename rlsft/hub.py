"""Fail fast without a network: one connection attempt decides whether the Hugging Face hub can be reached.

Why: without a network, huggingface_hub retries each file five times with back-off and logs every attempt, so a
model or dataset missing from the local cache takes 30-50 s and two dozen warnings before its one-line error. When
``HF_HUB_OFFLINE`` is set, or one TCP connection to the hub endpoint (or the HTTPS proxy in front of it) fails, the
process switches the hub libraries to offline mode: what is in the local cache still loads, anything else fails at
once with the caller's one-line error.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import urllib.request
from urllib.parse import urlparse

log = logging.getLogger(__name__)
_VERDICT: dict[str, str] = {}  # "reason" once decided, for the error lines


def _target(endpoint: str) -> tuple[str, int]:
    """The host and port a request to ``endpoint`` first connects to (the proxy when one applies)."""
    url = urlparse(endpoint)
    scheme = url.scheme or "https"
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def go_offline() -> None:
    """Put huggingface_hub, transformers and datasets in offline mode for the rest of the process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:  # it copies the flag at import
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
        datasets.config.HF_DATASETS_OFFLINE = True


def offline(timeout: float = 3.0) -> str | None:
    """Why the hub is out of reach (then offline mode is on), or None when it answers; decided once per process."""
    if "reason" not in _VERDICT:
        from huggingface_hub import constants

        reason = ""
        if constants.HF_HUB_OFFLINE:
            reason = "HF_HUB_OFFLINE=1"
        else:
            host, port = _target(constants.ENDPOINT)
            try:
                socket.create_connection((host, port), timeout=timeout).close()
            except OSError as exc:
                reason = f"{constants.ENDPOINT} is unreachable ({exc.strerror or type(exc).__name__})"
        _VERDICT["reason"] = reason
        if reason:
            go_offline()
            log.info("hugging face hub: %s; only the local cache is used", reason)
    return _VERDICT["reason"] or None
