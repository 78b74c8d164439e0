"""A process that holds a cache lock: ``python -m tests.fleet.holder LOCK_PATH HOST LEASE``.

Takes the lock (waiting for it), prints ``held <pid>`` and keeps it, renewing its lease, until
its stdin closes or it is killed; the tests stop (SIGSTOP) or kill (SIGKILL) it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from asynchub._cache.locks import CacheLock


def main() -> None:
    path, host, lease = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    lock = CacheLock(path, host=host, lease=lease)
    deadline = time.monotonic() + 60
    while not lock.try_acquire():
        if time.monotonic() > deadline:
            raise SystemExit("could not take the lock within 60 s")
        time.sleep(0.01)
    sys.stdout.write(f"held {lock.path}\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the test closes our stdin
    lock.release()


if __name__ == "__main__":
    main()
