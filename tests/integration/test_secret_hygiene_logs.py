"""The chainer as a process at debug log level: the signing key appears nowhere in its output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from processors.integrity.keys import write_keypair
from producers.load import send_kafka
from sealtrail.infra.config import Settings


def test_chainer_debug_output_holds_no_signing_key(settings: Settings, tmp_path: Path) -> None:
    private, _public = write_keypair("sealtrail.test", tmp_path / "keys")
    secret = private.read_text(encoding="utf-8").strip()
    seed = secret.split("+", 4)[4]  # the base64 part may itself contain "+"
    assert len(seed) >= 40
    assert send_kafka(settings, 30, 0, 2, seed=3, progress=lambda *_: None).sent == 30
    env = {
        **os.environ,
        "SEALTRAIL_LOG_LEVEL": "debug",
        "SEALTRAIL_KAFKA": settings.kafka,
        "SEALTRAIL_TOPIC_PREFIX": settings.topic_prefix,
        "SEALTRAIL_DEPLOYMENT": settings.deployment,
        "SEALTRAIL_HOME": str(tmp_path / "home"),
        "SEALTRAIL_SIGNING_KEY": str(private),
    }
    sealtrail = str(Path(sys.executable).parent / "sealtrail")
    done = subprocess.run(
        [sealtrail, "chain", "--once", "--checkpoint-records", "5"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 0, output[-2000:]
    assert "chained 30 records" in output and "sealtrail.chainer:" in output  # logs on
    for material in (secret, seed, seed[:16]):
        assert material not in output

    # The same key with mode 0644 is refused in one sentence, again without the key.
    private.chmod(0o644)
    done = subprocess.run([sealtrail, "chain", "--once"], env=env, capture_output=True, timeout=60)
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 2 and "chmod 600" in output and "Traceback" not in output
    for material in (secret, seed, seed[:16]):
        assert material not in output
