"""The labeling tests' client of the real Label Studio server (``label_studio``, tests/conftest.py), with the
environment the CLI reads the server from."""

from __future__ import annotations

import pytest


@pytest.fixture
def server(label_studio, monkeypatch):
    from label_studio_sdk import LabelStudio

    url, token = label_studio
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    return LabelStudio(base_url=url, api_key=token)
