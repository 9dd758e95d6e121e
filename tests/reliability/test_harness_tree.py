"""The reliability suite tests this checkout, not whatever tree the virtualenv's install points at.

The virtualenv holds an editable install of swin-serve: a finder that maps ``swin_serve`` to the
folder of the checkout it was installed from. A second checkout (a worktree, a copy, CI's cache)
using the same virtualenv would, through it, start the first checkout's server and pass or fail on
code it never changed. The harness prints the folder of the ``swin_serve`` it imported; these tests
read it from a live server's log.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

IMPORTED_FROM = re.compile(r"^harness: swin_serve imported from (.+)$", re.MULTILINE)


def imported_service(log: str) -> Path:
    match = IMPORTED_FROM.search(log)
    assert match, f"the harness did not say which swin_serve it imported:\n{log}"
    return Path(match.group(1)).resolve()


def test_the_server_runs_this_checkouts_service_whatever_else_is_on_the_path(
    start_server, helpers, tmp_path, monkeypatch
):
    """A complete second copy of the package first on the inherited PYTHONPATH, as another
    checkout is through the editable install: the server still runs this checkout's."""
    elsewhere = tmp_path / "other_checkout"
    shutil.copytree(
        helpers.root / "src" / "swin_serve",
        elsewhere / "swin_serve",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    monkeypatch.setenv("PYTHONPATH", str(elsewhere))
    server = start_server()
    assert imported_service(server.log()) == (helpers.root / "src" / "swin_serve").resolve()


def test_checkout_env_puts_this_checkout_before_another_tree(helpers, tmp_path):
    """The control for the test above: from another folder, a copy first on PYTHONPATH is what
    Python imports (so the test above can fail), unless ``checkout_env`` puts the root first."""
    elsewhere = tmp_path / "other_checkout"
    (elsewhere / "swin_serve").mkdir(parents=True)
    (elsewhere / "swin_serve" / "__init__.py").write_text("")
    inherited = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(elsewhere)}

    def service_folder(env: dict[str, str]) -> Path:
        code = "import os, swin_serve; print(os.path.dirname(swin_serve.__file__))"
        out = subprocess.run(
            [helpers.harness_command[0], "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return Path(out.stdout.strip()).resolve()

    assert service_folder(inherited) == (elsewhere / "swin_serve").resolve()
    assert (
        service_folder(helpers.checkout_env(inherited))
        == (helpers.root / "src" / "swin_serve").resolve()
    )
