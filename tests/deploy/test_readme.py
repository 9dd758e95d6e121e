"""The configuration page's settings table documents every setting with its real default."""

import re
from pathlib import Path

from swin_serve.server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"


def test_configuration_table_lists_every_setting_with_its_default():
    page = CONFIGURATION.read_text(encoding="utf-8")
    settings = page.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(SWIN_[A-Z_]+)` \| `([^`]*)` \|", settings, flags=re.M))
    expected = {
        f"SWIN_{name.upper()}": str(field.default) for name, field in Settings.model_fields.items()
    }
    assert rows == expected
