"""The settings table: every setting is declared once (default, parser, variable and/or file
key) and reachable from where the README says; in-process, no root needed."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from server.config import ENVIRONMENT, ResourceLimits, Settings, load_settings
from server.errors import ConfigError
from tests.helpers import REPO


def file_keys(kind: type) -> dict[str, str]:
    return {f.metadata["key"]: f.name for f in fields(kind) if f.metadata.get("key")}


def test_every_setting_is_read_from_a_variable_or_a_file_key():
    for kind in (Settings, ResourceLimits):
        for spec in fields(kind):
            assert spec.metadata.get("env") or spec.metadata.get("key"), f"{kind.__name__}.{spec.name}"


def test_the_readme_documents_every_variable_and_file_key():
    readme = (REPO / "README.md").read_text()
    for name in [*ENVIRONMENT, *file_keys(Settings)]:
        assert f"| `{name}` |" in readme, name
    for key in file_keys(ResourceLimits):
        assert f'"{key}"' in readme, key


def test_file_then_environment_override_the_defaults_nested_sections_included(tmp_path):
    config = tmp_path / "scaling.json"
    document = {"maxConcurrentTrainingCycles": 4, "aggregationMethod": "median", "resourceLimits": {"cpu": 8}}
    config.write_text(json.dumps(document))
    settings = load_settings(config, {"PETALS_MAX_CONCURRENT_CYCLES": "6", "SANDBOX_DEFAULT_PIDS": "64"})
    assert settings.max_concurrent_cycles == 6 and settings.aggregation_method == "median"
    assert settings.resource_limits == ResourceLimits(cpu_cores=8.0)  # memory and gpu keep their defaults
    assert settings.sandbox_default_pids == 64
    assert load_settings(None, {}) == Settings()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"resourceLimits": {"disk": 5}},
            "resourceLimits has unknown key(s) disk; allowed: cpu, gpu, memory",
        ),
        ({"resourceLimits": 5}, "resourceLimits must be an object"),
        ({"resourceLimits": {"gpu": -1}}, "resourceLimits.gpu must be an integer between 0 and 64, got -1"),
        ({"aggregationMethod": "best"}, "aggregationMethod must be one of fedavg, mean, median"),
        ({"maxConcurrentCycles": 3}, "has unknown key(s) maxConcurrentCycles; allowed: aggregationMethod"),
    ],
)
def test_a_bad_file_value_is_refused_naming_its_key(tmp_path, document, message):
    config = tmp_path / "scaling.json"
    config.write_text(json.dumps(document))
    with pytest.raises(ConfigError) as refused:
        load_settings(config, {})
    assert message in str(refused.value)


def test_a_bad_secret_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"WONDERCRAFT_ADMIN_TOKEN": "short secret"})
    assert "WONDERCRAFT_ADMIN_TOKEN=(hidden) is invalid" in str(refused.value)
    assert "short secret" not in str(refused.value)


def test_the_default_epochs_range_is_the_per_request_bound_in_readme_openapi_and_settings():
    from server.http.schemas.petals import PETALS
    from server.vocabulary import EPOCHS_MAX

    bound = PETALS["PetalTrainingRequest"]["properties"]["trainingParams"]["properties"]["epochs"]
    assert (bound["minimum"], bound["maximum"]) == (1, EPOCHS_MAX)
    row = next(
        line for line in (REPO / "README.md").read_text().splitlines() if "`PETALS_DEFAULT_EPOCHS`" in line
    )
    assert f"(1–{EPOCHS_MAX}," in row
    assert load_settings(None, {"PETALS_DEFAULT_EPOCHS": str(EPOCHS_MAX)}).default_epochs == EPOCHS_MAX
    with pytest.raises(ConfigError, match="PETALS_DEFAULT_EPOCHS"):
        load_settings(None, {"PETALS_DEFAULT_EPOCHS": str(EPOCHS_MAX + 1)})
