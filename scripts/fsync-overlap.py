#!/usr/bin/env python3
"""How this machine's disk takes fdatasync: alone, and several at once.

Prints, for 1, 2 and 4 threads each appending small records to its own place in one
preallocated file with an fdatasync after each, the fdatasyncs per second and their p50.
If 2 threads get clearly more syncs per second at about the same p50, the disk overlaps
flushes, and a WAL that starts the next batch's fdatasync while one is in flight would
cut the time appends spend queued behind another's sync.

    python3 scripts/fsync-overlap.py [DIR]     # DIR: on the disk to measure (default: .)
"""

import os
import sys
import tempfile
import threading
import time

RECORD = b"r" * 300
SYNCS_PER_THREAD = 2000
FILE_BYTES = 256 << 20


def appender(fd, lane, lanes, latencies):
    mine = []
    for i in range(SYNCS_PER_THREAD):
        offset = (i * lanes + lane) * 4096
        started = time.perf_counter()
        os.pwrite(fd, RECORD, offset)
        os.fdatasync(fd)
        mine.append(time.perf_counter() - started)
    latencies.extend(mine)


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    with tempfile.NamedTemporaryFile(dir=directory) as f:
        fd = f.fileno()
        os.posix_fallocate(fd, 0, FILE_BYTES)
        os.fsync(fd)
        for lanes in (1, 2, 4):
            latencies = []
            threads = [
                threading.Thread(target=appender, args=(fd, lane, lanes, latencies))
                for lane in range(lanes)
            ]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            latencies.sort()
            p50 = latencies[len(latencies) // 2] * 1e6
            print(f"{lanes} thread(s): {len(latencies) / elapsed:.0f} fdatasync/s, p50 {p50:.0f} us")


if __name__ == "__main__":
    main()
