"""SECURITY.md stays true to the code: every default and limit it names is the code's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bucket_app.settings import KEYS, SECRET_KEYS
from bucket_app.sql import pool as sqlproc
from bucket_app.web import admission, middleware, params

MODULES = [middleware, params, admission, sqlproc]

REPO = Path(__file__).resolve().parents[2]
SECURITY = (REPO / "SECURITY.md").read_text()
ROWS = {m.group(1): m.group(2) for m in re.finditer(
    r"^\| `(\w+)` \| (`[^`]*`|required) \|", SECURITY, flags=re.MULTILINE)}
KEYS_BY_NAME = {key.name: key for key in KEYS}


def test_every_settings_default_in_the_limits_table_is_the_codes():
    named = {name: text for name, text in ROWS.items() if name in KEYS_BY_NAME}
    assert {"web_host", "http_token", "sql_client_limit", "sql_queue_limit", "sql_time_limit",
            "sql_row_limit", "max_future_skew", "clean_interval"} <= set(named)
    for name, text in named.items():
        default = KEYS_BY_NAME[name].default
        assert text == ("required" if default is None else f"`{default}`"), name


@pytest.mark.parametrize("module", MODULES)
def test_every_constant_in_the_limits_table_is_the_codes(module):
    constants = {name: text for name, text in ROWS.items() if name.isupper()}
    assert {"MAX_URL_BYTES", "MAX_HEADER_BYTES", "HANG_GRACE_S"} <= set(constants)
    for name, text in constants.items():
        if hasattr(module, name):
            assert text == f"`{getattr(module, name)}`", name
    assert all(any(hasattr(m, name) for m in MODULES) for name in constants)


def test_every_key_named_in_backquotes_exists():
    """A renamed key must not live on in the document."""
    words = set(re.findall(r"`([a-z_]+)`", SECURITY))
    keyish = {w for w in words if "_" in w and (w.startswith(("sql_", "sasl_", "ssl_", "web_"))
                                                or w.endswith(("_limit", "_interval", "_skew")))}
    assert keyish <= set(KEYS_BY_NAME), keyish - set(KEYS_BY_NAME)


def test_secrets_are_advised_through_the_environment():
    for name in SECRET_KEYS:
        assert KEYS_BY_NAME[name].env in SECURITY
