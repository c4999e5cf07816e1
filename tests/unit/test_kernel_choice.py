"""BUCKET_APP_KERNEL: which code counts (native for JSON unless set to python), said once at
start-up; a bad value stops it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bucket_app.counting.kernel import NativeKernel
from bucket_app.errors import SettingsError
from bucket_app.kafka.registry import Reader
from bucket_app.worker import KERNEL_ENV, counting_kernel
from tests.support.settings import AVRO_SCHEMA_PATH, make_settings


def test_native_is_the_default_for_json(tmp_path: Path) -> None:
    for environ in ({}, {KERNEL_ENV: ""}, {KERNEL_ENV: " Native "}):
        kernel, line = counting_kernel(make_settings(tmp_path), environ)
        assert isinstance(kernel, NativeKernel) and line.startswith("counting kernel: native")


def test_python_runs_the_pure_python_path(tmp_path: Path) -> None:
    kernel, line = counting_kernel(make_settings(tmp_path), {KERNEL_ENV: " Python "})
    assert kernel is None and line == "counting kernel: python (BUCKET_APP_KERNEL=python)"


def test_native_counts_avro_with_the_kernel_and_says_so(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, avro_val_schema=str(AVRO_SCHEMA_PATH))
    kernel, line = counting_kernel(settings, {})
    assert isinstance(kernel, NativeKernel) and kernel.reads_avro
    assert line.startswith("counting kernel: native") and "Avro" in line


def test_native_with_a_registry_reads_writer_schemas_by_id(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, avro_val_schema=str(AVRO_SCHEMA_PATH))
    kernel, line = counting_kernel(settings, {KERNEL_ENV: "native"}, schemas={},
                                   reader=Reader(settings.avro_schema))
    assert isinstance(kernel, NativeKernel) and kernel.reads_avro and "registry" in line


def test_another_value_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="BUCKET_APP_KERNEL='rust'"):
        counting_kernel(make_settings(tmp_path), {KERNEL_ENV: "rust"})
