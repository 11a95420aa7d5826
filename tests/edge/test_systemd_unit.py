import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "facegate.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies():
    proc = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_unit_has_the_promised_hardening():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=strict", "PrivateTmp=yes",
                 "NoNewPrivileges=yes", "DeviceAllow=", "StateDirectory=", "ConfigurationDirectory=",
                 "LoadCredential"):
        assert line in text, line
