"""Where a worker's memory is: put this directory on PYTHONPATH of a `faust -A bucket_app
worker` (for instance `PYTHONPATH=$PWD/bench/memprobe make soak`), and every 5 s the worker writes a
line to $MEMPROBE_DIR/mem-<pid>.log (default /tmp): seconds since start, VmRSS, RssAnon and
RssFile (KiB), glibc's heap (mallinfo2: arena, mmapped, in use, free, MiB), the RocksDB
databases open, their memtables and block cache (MiB) and table readers (KiB), Python's
allocated blocks and the threads. A diagnostic of the soak (docs/performance.md), not part of
bucket_app.
"""

import os
import sys
import threading
import time

if "bucket_app" in sys.argv and "worker" in sys.argv:  # python -m faust -A bucket_app worker

    def _probe() -> None:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = MallInfo2
        directory = os.environ.get("MEMPROBE_DIR", "/tmp")
        out = open(f"{directory}/mem-{os.getpid()}.log", "w", buffering=1)  # noqa: SIM115
        started = time.monotonic()
        while True:
            time.sleep(5)
            try:
                from bucket_app.seam.store import open_dbs

                status = {line.split(":")[0]: line.split()[1]
                          for line in open("/proc/self/status")  # noqa: SIM115
                          if line.startswith(("VmRSS", "RssAnon", "RssFile"))}
                heap = libc.mallinfo2()
                app = getattr(sys.modules.get("bucket_app"), "app", None)
                dbs = [] if app is None else [
                    db for table in app.tables.values() for db in open_dbs(table.data).values()]
                memtables = sum(db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
                                for db in dbs)
                cache = sum(db.property_int_value("rocksdb.block-cache-usage") or 0 for db in dbs)
                readers = sum(int(db.property_value("rocksdb.estimate-table-readers-mem") or 0)
                              for db in dbs)
                out.write(
                    f"{time.monotonic() - started:.0f} rss={status['VmRSS']} "
                    f"anon={status['RssAnon']} file={status['RssFile']} "
                    f"heap={heap.arena >> 20} mmapped={heap.hblkhd >> 20} "
                    f"in_use={heap.uordblks >> 20} free={heap.fordblks >> 20} dbs={len(dbs)} "
                    f"memtables={memtables >> 20} block_cache={cache >> 20} "
                    f"table_readers_k={readers >> 10} py_blocks={sys.getallocatedblocks()} "
                    f"threads={threading.active_count()}\n")
            except Exception as exc:  # noqa: BLE001 - a probe: say it and go on
                out.write(f"error {exc!r}\n")

    threading.Thread(target=_probe, name="memprobe", daemon=True).start()
