from __future__ import annotations

from pathlib import Path

import pytest

from imagefinder.config import Settings, env_var_names

CONFIGURATION = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = CONFIGURATION.read_text()
    missing = [name for name in env_var_names() if f"`{name}`" not in text]
    assert missing == []


def test_env_vars_and_nested_groups(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGEFINDER_HOME", str(tmp_path))
    monkeypatch.setenv("IMAGEFINDER_STORE__PATH", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("IMAGEFINDER_API__MAX_K", "7")
    settings = Settings()
    assert settings.home_dir == tmp_path
    assert settings.store_dir == tmp_path / "elsewhere"
    assert settings.model_cache_dir == tmp_path / "models"
    assert settings.api.max_k == 7


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEFINDER_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="batch_size"):
        Settings()
