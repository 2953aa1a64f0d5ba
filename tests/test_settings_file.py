"""Settings come from arguments, then GUARDFORGE_* variables, then the YAML file named by GUARDFORGE_CONFIG."""

from __future__ import annotations

import pytest

from guardforge.settings import Settings


def test_config_file_is_read_and_environment_wins(tmp_path, monkeypatch):
    config = tmp_path / "guardforge.yaml"
    config.write_text("max_loaded_models: 3\nlimits:\n  max_steps: 77\n  max_batch_size: 5\n")
    monkeypatch.setenv("GUARDFORGE_CONFIG", str(config))
    monkeypatch.setenv("GUARDFORGE_LIMITS__MAX_BATCH_SIZE", "2")
    settings = Settings(home=tmp_path)
    assert settings.max_loaded_models == 3 and settings.limits.max_steps == 77
    assert settings.limits.max_batch_size == 2  # the environment over the file
    assert Settings(home=tmp_path, max_loaded_models=1).max_loaded_models == 1  # arguments over both


def test_a_bad_value_in_the_config_file_is_refused(tmp_path, monkeypatch):
    from pydantic import ValidationError

    config = tmp_path / "guardforge.yaml"
    config.write_text("limits:\n  max_steps: many\n")
    monkeypatch.setenv("GUARDFORGE_CONFIG", str(config))
    with pytest.raises(ValidationError, match="max_steps"):
        Settings(home=tmp_path)
