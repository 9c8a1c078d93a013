from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty huggingface_hub cache in offline mode (constants are read at import, so patch them too)."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache
