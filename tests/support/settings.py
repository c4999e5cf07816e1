"""Settings files for tests: the seed's ``settings.ini``, its two JSON schema files, edits.

:data:`SEED_INI` is the seed example (broker 127.0.0.1:9092, topic ``test``, an in-memory
snapshot), :func:`write_config` writes it with its schema files into a directory, and
:func:`replace_line` changes one ``key = value`` line. :func:`make_settings` loads the seed
with changes and its own data directory; :func:`scratch_dir` is a directory for module-level
settings (hypothesis tests cannot share ``tmp_path``). Loading a file contacts nothing: a unit
test may use any of these with no broker running.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

from bucket_app.settings import Settings, load
from tests.support import REPO

AVRO_SCHEMA_PATH = REPO / "schemas" / "example.avsc"

SEED_INI = """\
[KafkaSettings]
brokers = 127.0.0.1:9092
topic = test
avro_val_schema = None

[MsgSettings]
bucket_interval = 20
bucket_field = timestamp
bucket_type = epoch
msg_map_schema = msg_map_schema.json

[HTTPEndpointSetting]
sqlite_schema = sqlite_schema.json
sqlite_db = :memory:
sqlite_table = default
clean_interval = 10
clean_freq = 10
"""

MSG_MAP = {"origin_server": "server_name", "topic": "topic"}
SQLITE_SCHEMA = {
    "server_name": "TEXT", "topic": "TEXT", "bucket_start": "INTEGER",
    "bucket_end": "INTEGER", "count": "INTEGER",
}


def write_config(tmp_path: Path, ini: str = SEED_INI, msg_map: object = MSG_MAP,
                 schema: object = SQLITE_SCHEMA) -> Path:
    (tmp_path / "msg_map_schema.json").write_text(json.dumps(msg_map))
    (tmp_path / "sqlite_schema.json").write_text(json.dumps(schema))
    path = tmp_path / "settings.ini"
    path.write_text(ini)
    return path


def replace_line(ini: str, key: str, new_value: str) -> str:
    lines = [f"{key} = {new_value}" if line.split("=")[0].strip() == key else line
             for line in ini.splitlines()]
    return "\n".join(lines) + "\n"


def scratch_dir(prefix: str) -> Path:
    """A directory for module-level fixtures (hypothesis tests cannot share tmp_path),
    removed when the test run ends."""
    path = Path(tempfile.mkdtemp(prefix=f"bucket_app-{prefix}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def make_settings(directory: Path, *, ini: str = SEED_INI,
                  msg_map: dict[str, str] | None = None,
                  schema: dict[str, str] | None = None, **changes: str) -> Settings:
    """The seed's settings under ``directory``, with ``key = value`` lines replaced."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in changes.items():
        ini = replace_line(ini, key, value)
    if "data_dir" not in changes:
        ini = ini.replace("[HTTPEndpointSetting]\n",
                          f"[HTTPEndpointSetting]\ndata_dir = {directory}/data\n")
    path = write_config(directory, ini, msg_map or {"origin_server": "server_name",
                                                    "topic": "topic"},
                        schema or SQLITE_SCHEMA)
    return load(path, {})
