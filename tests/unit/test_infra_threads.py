"""sealtrail.infra.threads: the kernel sees the name a thread gives itself."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from sealtrail.infra.threads import name_os_thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel thread names: Linux")
def test_a_thread_names_itself_in_the_kernel_cut_to_15_bytes() -> None:
    seen: list[str] = []

    def run() -> None:
        name_os_thread("sealtrail-insert-worker")
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == ["sealtrail-inser"]
    # The calling thread (pytest's) keeps its own name.
    comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
    assert comm != "sealtrail-inser"
