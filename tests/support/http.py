"""HTTP for tests and the benchmark: every answer as status, headers and body, or JSON."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class HttpAnswer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def http(url: str, data: bytes | None = None, method: str | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10) -> HttpAnswer:
    """Any status is an answer; only a failure to get one raises (``OSError``)."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return HttpAnswer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return HttpAnswer(exc.code, exc.headers, exc.read())


def http_json(url: str, timeout: float = 10) -> Any:
    """GET ``url``'s JSON; anything but a 2xx answer raises (``HTTPError``, an ``OSError``)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())
