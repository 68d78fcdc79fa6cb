"""Settings read from the environment: a value the gateway cannot run with stops it with the variable's name."""

from __future__ import annotations

import pytest

from anthropic_gateway.settings import SettingsError, get_settings


@pytest.fixture
def environment(monkeypatch):
    """Set gateway environment variables for one test; settings are read again before and after it."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.mark.parametrize("name", ["KEY_CACHE_TTL", "AWS_DEADLINE", "MAX_REQUEST_BYTES"])
def test_a_number_that_is_not_one_names_its_variable(environment, name):
    environment.setenv(name, "ten seconds")
    with pytest.raises(SettingsError, match=f"{name}='ten seconds': expected a number"):
        get_settings()


def test_numbers_and_empty_values_are_read(environment):
    environment.setenv("KEY_CACHE_TTL", "2.5")
    environment.setenv("AWS_DEADLINE", "")
    settings = get_settings()
    assert (settings.key_cache_ttl, settings.aws_deadline) == (2.5, 2.5)  # "": the default
