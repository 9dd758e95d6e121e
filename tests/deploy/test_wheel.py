"""What the project's wheel ships: one package, swin_serve (model, artifact, export, server), never the dev tools."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_one_package_and_no_dev_tools(tmp_path):
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*build, "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    packages = {t for t in tops if not t.endswith(".dist-info")}
    assert packages == {"swin_serve"}
    names = zipfile.ZipFile(wheel).namelist()
    # The data the server needs at run time travels with it.
    assert "swin_serve/model/data/imagenet1k_labels.txt" in names
    assert "swin_serve/server/http/static/index.html" in names
