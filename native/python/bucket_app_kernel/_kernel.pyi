# Types of the Rust extension (native/src/lib.rs documents each call).
from typing import Any

#: (index, offset, timestamp ms, timestamp type, key, value, headers)
Record = tuple[int, int, int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]
#: (mapped values, bucket start, count, highest offset)
Group = tuple[tuple[Any, ...], int, int, int]

class Refused(Exception): ...
class KernelError(RuntimeError): ...

def unpack(
    data: bytes, fetch_offset: int, *, aborted: list[tuple[int, int]] | None = None,
    read_committed: bool = False, check_crcs: bool = True, max_batch_bytes: int,
) -> tuple[list[Record], int, int]: ...
def _panic() -> None: ...

#: an Avro plan (bucket_app.counting.avro_plan): (kind, slot or -1, argument) per operation
Plan = list[tuple[str, int, Any]]

class Kernel:
    def __init__(self, columns: list[str], time_field: str, time_type: str, interval_s: int,
                 max_future_skew_s: float, max_batch_bytes: int, *, avro: Plan | None = None,
                 registry: bool = False) -> None: ...
    def add_writer(self, id: int, plan: Plan | None) -> None: ...
    def count(
        self, data: bytes, fetch_offset: int, now_s: float, *,
        aborted: list[tuple[int, int]] | None = None, read_committed: bool = False,
        check_crcs: bool = True, trace: bool = False, offsets: bool = False, offset_gaps: bool = False,
    ) -> tuple[list[Group], list[Record], int, int | None, int | None, int, int, int | None,
               float | None, list[int] | None, list[int] | None]: ...
