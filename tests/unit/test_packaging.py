"""pyproject.toml lists packages by hand (the folders install under mmcurate.*): every package folder and every
data file a package reads must be in it, or the installed wheel lacks them while the editable checkout works."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

REPO = Path(__file__).parents[2]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder(package: str) -> Path:
    """A package's folder through the package-dir mapping (mmcurate.pipeline.demo -> pipeline/demo)."""
    for root, folder in sorted(SETUPTOOLS["package-dir"].items(), key=lambda kv: -len(kv[0])):
        if package == root or package.startswith(root + "."):
            return REPO / folder / Path(*package[len(root) + 1 :].split(".") if package != root else ())
    raise AssertionError(f"{package} is under no package-dir root")


def test_every_package_folder_is_listed():
    found = set()
    for root, folder in SETUPTOOLS["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((root, *parts)))
    assert found == set(SETUPTOOLS["packages"])


def test_every_data_file_in_a_package_folder_is_package_data():
    for package in SETUPTOOLS["packages"]:
        folder = _folder(package)
        patterns = SETUPTOOLS["package-data"].get(package, [])
        for path in folder.rglob("*"):
            relative = path.relative_to(folder)
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in relative.parts:
                continue
            if any((folder / Path(*relative.parts[:n]) / "__init__.py").exists() for n in range(1, len(relative.parts))):
                continue  # a file of a subpackage: that package's own entry covers it
            assert any(fnmatch.fnmatch(str(relative), p) for p in patterns), f"{package}: {relative} is not package data"


def test_the_demo_speech_clips_are_package_data_of_the_assets_package():
    speech = _folder("mmcurate.pipeline.demo.assets") / "speech"
    listed = {clip["file"] for clip in json.loads((speech / "speech.json").read_text())["clips"]}
    assert listed and listed == {p.name for p in speech.glob("*.flac")}
    assert "speech/*" in SETUPTOOLS["package-data"]["mmcurate.pipeline.demo.assets"]
