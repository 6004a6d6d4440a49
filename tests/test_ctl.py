"""The admin tool is installed and answers --help."""

import subprocess
import sys
from pathlib import Path

CTL = str(Path(sys.executable).parent / "wondercraft-ctl")


def test_ctl_prints_help_and_exits_zero():
    result = subprocess.run([CTL, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "Administer a WonderCraft service" in result.stdout
