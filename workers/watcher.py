"""The watcher process: `python -m workers.watcher`. Follows the sources with `watch: true` (one
process per source at a time, by lease) and turns their file changes into reconciles
(shared.sources.watching). Started by `make run` and by docker-compose; run as many as you like."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid

from shared.celeryconfig import enqueue, make_celery
from shared.services import build_services
from shared.settings import load_settings
from shared.sources.watching import WatchManager


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings()
    celery = make_celery(settings)
    svc = build_services(settings, lambda kind, job_id: enqueue(celery, kind, job_id), torch_threads=1)
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger(__name__).info("event=watcher.start token=%s roots=%s", token, settings.source_roots or "-")
    WatchManager(svc, token).run(stop)
    svc.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
