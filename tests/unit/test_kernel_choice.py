"""BUCKET_APP_KERNEL: which code counts (native for JSON unless set to python), said once at
start-up; a bad value stops it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bucket_app.counting.kernel import NativeKernel
from bucket_app.errors import SettingsError
from bucket_app.worker import KERNEL_ENV, counting_kernel
from tests.unit.test_fuzz_common import AVRO_SCHEMA_PATH, make_settings


def test_native_is_the_default_for_json(tmp_path: Path) -> None:
    for environ in ({}, {KERNEL_ENV: ""}, {KERNEL_ENV: " Native "}):
        kernel, line = counting_kernel(make_settings(tmp_path), environ)
        assert isinstance(kernel, NativeKernel) and line.startswith("counting kernel: native")


def test_python_runs_the_pure_python_path(tmp_path: Path) -> None:
    kernel, line = counting_kernel(make_settings(tmp_path), {KERNEL_ENV: " Python "})
    assert kernel is None and line == "counting kernel: python (BUCKET_APP_KERNEL=python)"


def test_native_leaves_avro_to_python_and_says_so(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, avro_val_schema=str(AVRO_SCHEMA_PATH))
    for environ in ({}, {KERNEL_ENV: "native"}):
        kernel, line = counting_kernel(settings, environ)
        assert kernel is None and "python" in line and "Avro" in line


def test_another_value_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="BUCKET_APP_KERNEL='rust'"):
        counting_kernel(make_settings(tmp_path), {KERNEL_ENV: "rust"})
