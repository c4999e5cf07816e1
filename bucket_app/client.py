"""The HTTP side of ``bucket-app query``: SQL to a running worker's ``POST /api/v1/sql`` with
urllib (:func:`run_query`), and its rows as a table, CSV or JSON (:func:`render`, pure).
"""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from bucket_app.errors import QueryError


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _cell(value: Any, null: str) -> str:
    if value is None:
        return null
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table: a header, a rule, the rows; numbers right-aligned, NULL shown."""
    cells = [[_cell(v, "NULL").replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
              for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows)
               for i in range(len(columns))]

    def line(values: Sequence[str], right: Sequence[bool]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w)
                         for v, w, r in zip(values, widths, right, strict=True)).rstrip()

    out = [line(columns, numeric), line(["-" * w for w in widths], numeric)]
    out.extend(line(row, numeric) for row in cells)
    return "\n".join(out) + "\n"


def render(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """The rows of a ``/api/v1/sql`` answer (objects in ``columns`` order) as table, csv, json."""
    if fmt == "json":
        return json.dumps([dict(r) for r in rows], ensure_ascii=False) + "\n"
    values = [[row.get(c) for c in columns] for row in rows]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(v, "") for v in row] for row in values)
        return buffer.getvalue()
    return render_table(columns, values)


def run_query(url: str, sql: str, params: list[Any] | None, token: str | None,
              timeout_s: float) -> dict[str, Any]:
    """POST ``sql`` to ``url``/api/v1/sql; the JSON answer, or QueryError with one line
    (ValueError for a URL that is not http or https)."""
    body: dict[str, Any] = {"sql": sql}
    if params:
        body["params"] = params
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked just above
        url.rstrip("/") + "/api/v1/sql", method="POST", data=json.dumps(body).encode(),
        headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise QueryError(_http_error(exc)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise QueryError(f"the worker is not reachable at {url} "
                         f"({one_line(str(reason)) or type(exc).__name__})") from None
    except ValueError as exc:
        raise QueryError(f"the answer from {url} is not JSON: {exc}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("rows"), list):
        raise QueryError(f"the answer from {url} is not an /api/v1/sql answer")
    return answer


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        message = json.loads(exc.read()).get("error")
    except (ValueError, AttributeError, OSError):
        message = None
    return f"HTTP {exc.code}: {one_line(message or exc.reason or 'error')}"
