"""The README's configuration table documents every setting with its real default."""

import re
from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_table_lists_every_setting_with_its_default():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(SWIN_[A-Z_]+)` \| `([^`]*)` \|", readme, flags=re.M))
    expected = {
        f"SWIN_{name.upper()}": str(field.default) for name, field in Settings.model_fields.items()
    }
    assert rows == expected
