"""RowPublisher without a broker: the record key, and the settings it refuses.

What reaches the output topic, on the real broker, is tests/integration/test_output_publisher.py.
"""

from __future__ import annotations

import pytest

from bucket_app.errors import SettingsError
from bucket_app.identity import counts_changelog
from bucket_app.snapshot.output import RowPublisher, row_key
from bucket_app.snapshot.state import ReaderState
from tests.support.output import settings_for
from tests.support.settings import MSG_MAP, SQLITE_SCHEMA

PARTITIONS = 2
T0 = 1_700_000_000  # a bucket start (multiple of 20)


def test_row_key_is_sorted_json_of_mapped_values_and_bucket_start():
    key = row_key({"topic": "t", "server_name": "a"}, T0)
    assert key == b'{"bucket_start":1700000000,"server_name":"a","topic":"t"}'
    assert key == row_key({"server_name": "a", "topic": "t"}, T0)
    assert row_key({"server_name": None, "topic": "t"}, T0) != row_key(
        {"server_name": "None", "topic": "t"}, T0)


def test_a_column_named_like_an_output_field_is_refused(tmp_path):
    schema = {**SQLITE_SCHEMA, "version": "TEXT"}
    settings = settings_for(tmp_path, {**MSG_MAP, "v": "version"}, schema)
    with pytest.raises(SettingsError, match="'version'"):
        RowPublisher(settings, "out", ReaderState(PARTITIONS), lambda: True)


def test_the_source_or_dead_letter_topic_is_refused_as_output(tmp_path):
    settings = settings_for(tmp_path)
    with pytest.raises(SettingsError, match="of its own"):
        RowPublisher(settings, settings.topic, ReaderState(PARTITIONS), lambda: True)
    with pytest.raises(SettingsError, match="of its own"):
        RowPublisher(settings, counts_changelog(settings), ReaderState(PARTITIONS), lambda: True)
