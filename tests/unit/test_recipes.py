"""The README names only recipes the Justfile has."""

from __future__ import annotations

import re

from tests.support import ROOT


def test_every_recipe_the_readme_names_exists() -> None:
    justfile = (ROOT / "Justfile").read_text()
    recipes = set(re.findall(r"^([a-z][a-z0-9-]*)(?:\s[^:\n]*)?:", justfile, flags=re.M))
    named = set(re.findall(r"`just ([a-z][a-z0-9-]*)", (ROOT / "README.md").read_text()))
    assert named - recipes == set()
