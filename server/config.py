"""Service configuration: built-in defaults, then the scaling JSON (--config), then
environment variables. Later sources win; every value is validated on the way in."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runtime.uids import UidRange

from .errors import ConfigError


@dataclass(frozen=True)
class ResourceLimits:
    """The most a single sandbox may ask for (the scaling JSON's resourceLimits)."""

    cpu_cores: float = 4.0
    memory_mb: int = 8192
    gpu_count: int = 1


@dataclass(frozen=True)
class Settings:
    max_concurrent_cycles: int = 10
    default_learning_rate: float = 0.001
    default_batch_size: int = 32
    default_epochs: int = 10
    sandbox_default_cpu_cores: float = 2.0
    sandbox_default_memory_mb: int = 4096
    sandbox_max_lifetime_s: int = 3600
    sandbox_cleanup_interval_s: int = 300
    telemetry_retention_days: int = 7
    telemetry_batch_size: int = 100
    telemetry_flush_interval_s: float = 60.0
    resource_limits: ResourceLimits = field(default_factory=ResourceLimits)
    aggregation_threshold: float = 0.67
    consensus_required: bool = True
    admin_token: str | None = None
    # Beyond the seed: operational knobs with conservative defaults.
    petals_max_queue_depth: int = 1000
    petals_max_retries: int = 3
    petals_retry_base_delay_s: float = 1.0
    petals_round_deadline_s: float = 300.0
    petals_max_model_parameters: int = 20_000_000
    sandbox_default_storage_mb: int = 512
    sandbox_default_pids: int = 256
    sandbox_output_limit_bytes: int = 1 << 20
    shutdown_grace_s: float = 30.0
    rootfs_image: str | None = None
    aggregation_method: str = "fedavg"
    max_update_norm: float = 1000.0
    validation_tolerance: float = 0.02
    learn_command: tuple[str, ...] = ("python", "/opt/wondercraft/learn_cycle.py")
    # Admission (runtime/admission.py) and sandbox uids (runtime/uids.py); 0: no per-agent cap.
    sandbox_host_memory_share_percent: int = 80
    sandbox_service_reserve_mb: int = 1024
    sandbox_cpu_overcommit: float = 16.0
    sandbox_agent_max_sandboxes: int = 64
    sandbox_agent_max_memory_mb: int = 0
    sandbox_agent_max_gpus: int = 0
    sandbox_uid_range: str = "600000-659999"


# ---- value parsers: each returns the parsed value or raises ValueError(expected) ----


def _int_between(lo: int, hi: int) -> Callable[[Any], int]:
    expected = f"an integer between {lo} and {hi}"

    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError(expected)
        if isinstance(raw, str):
            text = raw.strip()
            if not text.lstrip("+-").isdigit():
                raise ValueError(expected)
            value = int(text)
        elif isinstance(raw, int):
            value = raw
        elif isinstance(raw, float) and raw.is_integer():
            value = int(raw)
        else:
            raise ValueError(expected)
        if not lo <= value <= hi:
            raise ValueError(expected)
        return value

    return parse


def _number_between(lo: float, hi: float, *, lo_open: bool = True) -> Callable[[Any], float]:
    bound = ">" if lo_open else ">="
    expected = f"a number {bound} {lo:g} and <= {hi:g}"

    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError(expected)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(expected) from None
        if not math.isfinite(value) or value > hi or value < lo or (lo_open and value == lo):
            raise ValueError(expected)
        return value

    return parse


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError("true or false")


def _path(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.startswith("/") or "\0" in raw:
        raise ValueError("an absolute path")
    return raw


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        if raw not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return raw

    return parse


def _argv(raw: Any) -> tuple[str, ...]:
    expected = "a non-empty list of strings (a command and its arguments, no shell)"
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(a, str) and a and "\0" not in a for a in raw)
    ):
        raise ValueError(expected)
    return tuple(raw)


def _token(raw: Any) -> str:
    expected = "a string of 16 to 512 printable characters without whitespace"
    if not isinstance(raw, str) or not 16 <= len(raw) <= 512:
        raise ValueError(expected)
    if any(c.isspace() or not c.isprintable() for c in raw):
        raise ValueError(expected)
    return raw


# Environment variable -> (Settings field, parser). Documented in README's configuration table.
ENVIRONMENT: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "PETALS_MAX_CONCURRENT_CYCLES": ("max_concurrent_cycles", _int_between(1, 1024)),
    "PETALS_DEFAULT_LEARNING_RATE": ("default_learning_rate", _number_between(0.0, 10.0)),
    "PETALS_DEFAULT_BATCH_SIZE": ("default_batch_size", _int_between(1, 65536)),
    "PETALS_DEFAULT_EPOCHS": ("default_epochs", _int_between(1, 10000)),
    "SANDBOX_DEFAULT_CPU": ("sandbox_default_cpu_cores", _number_between(0.0, 1024.0)),
    "SANDBOX_DEFAULT_MEMORY": ("sandbox_default_memory_mb", _int_between(16, 262144)),
    "SANDBOX_MAX_LIFETIME": ("sandbox_max_lifetime_s", _int_between(1, 604800)),
    "SANDBOX_CLEANUP_INTERVAL": ("sandbox_cleanup_interval_s", _int_between(1, 86400)),
    "TELEMETRY_RETENTION_DAYS": ("telemetry_retention_days", _int_between(1, 3650)),
    "TELEMETRY_BATCH_SIZE": ("telemetry_batch_size", _int_between(1, 100000)),
    "TELEMETRY_FLUSH_INTERVAL": ("telemetry_flush_interval_s", _number_between(0.0, 86400.0)),
    "WONDERCRAFT_ADMIN_TOKEN": ("admin_token", _token),
    "PETALS_MAX_QUEUE_DEPTH": ("petals_max_queue_depth", _int_between(1, 1000000)),
    "PETALS_MAX_RETRIES": ("petals_max_retries", _int_between(0, 100)),
    "PETALS_RETRY_BASE_DELAY": ("petals_retry_base_delay_s", _number_between(0.0, 3600.0)),
    "PETALS_ROUND_DEADLINE": ("petals_round_deadline_s", _number_between(0.0, 86400.0)),
    "PETALS_MAX_MODEL_PARAMETERS": ("petals_max_model_parameters", _int_between(1, 2_000_000_000)),
    "SANDBOX_DEFAULT_STORAGE": ("sandbox_default_storage_mb", _int_between(1, 1048576)),
    "SANDBOX_DEFAULT_PIDS": ("sandbox_default_pids", _int_between(8, 65536)),
    "SANDBOX_OUTPUT_LIMIT": ("sandbox_output_limit_bytes", _int_between(1024, 1 << 30)),
    "WONDERCRAFT_SHUTDOWN_GRACE": ("shutdown_grace_s", _number_between(0.0, 3600.0, lo_open=False)),
    "WONDERCRAFT_ROOTFS_IMAGE": ("rootfs_image", _path),
    "SANDBOX_HOST_MEMORY_SHARE": ("sandbox_host_memory_share_percent", _int_between(1, 100)),
    "SANDBOX_SERVICE_RESERVE": ("sandbox_service_reserve_mb", _int_between(0, 1048576)),
    "SANDBOX_CPU_OVERCOMMIT": ("sandbox_cpu_overcommit", _number_between(0.0, 1024.0)),
    "SANDBOX_AGENT_MAX_SANDBOXES": ("sandbox_agent_max_sandboxes", _int_between(1, 1000000)),
    "SANDBOX_AGENT_MAX_MEMORY": ("sandbox_agent_max_memory_mb", _int_between(0, 1 << 30)),
    "SANDBOX_AGENT_MAX_GPUS": ("sandbox_agent_max_gpus", _int_between(0, 64)),
    "SANDBOX_UID_RANGE": ("sandbox_uid_range", lambda raw: str(UidRange.parse(raw))),
}

# Scaling JSON key -> (Settings field, parser).
CONFIG_FILE_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "maxConcurrentTrainingCycles": ENVIRONMENT["PETALS_MAX_CONCURRENT_CYCLES"],
    "maxSandboxLifetime": ENVIRONMENT["SANDBOX_MAX_LIFETIME"],
    "aggregationThreshold": ("aggregation_threshold", _number_between(0.0, 1.0)),
    "consensusRequired": ("consensus_required", _boolean),
    "aggregationMethod": (
        "aggregation_method",
        _one_of("fedavg", "mean", "median", "trimmed_mean", "krum", "multi_krum"),
    ),
    "maxUpdateNorm": ("max_update_norm", _number_between(0.0, 1e12)),
    "validationTolerance": ("validation_tolerance", _number_between(0.0, 1e6, lo_open=False)),
    "learnCommand": ("learn_command", _argv),
}

RESOURCE_LIMIT_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "cpu": ("cpu_cores", _number_between(0.0, 1024.0)),
    "memory": ("memory_mb", _int_between(16, 262144)),
    "gpu": ("gpu_count", _int_between(0, 64)),
}


def _show(raw: Any) -> str:
    text = json.dumps(raw) if not isinstance(raw, str) else repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


def _apply_file(settings: Settings, path: Path) -> Settings:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must hold a JSON object, got {type(document).__name__}")
    known = set(CONFIG_FILE_KEYS) | {"resourceLimits"}
    unknown = sorted(set(document) - known)
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )
    changes: dict[str, Any] = {}
    for key, (attr, parse) in CONFIG_FILE_KEYS.items():
        if key in document:
            try:
                changes[attr] = parse(document[key])
            except ValueError as exc:
                raise ConfigError(
                    f"config file {path}: {key} must be {exc}, got {_show(document[key])}"
                ) from None
    if "resourceLimits" in document:
        limits = document["resourceLimits"]
        if not isinstance(limits, dict):
            raise ConfigError(f"config file {path}: resourceLimits must be an object")
        unknown = sorted(set(limits) - set(RESOURCE_LIMIT_KEYS))
        if unknown:
            raise ConfigError(
                f"config file {path}: resourceLimits has unknown key(s) {', '.join(unknown)}; "
                f"allowed: cpu, memory, gpu"
            )
        limit_changes = {}
        for key, (attr, parse) in RESOURCE_LIMIT_KEYS.items():
            if key in limits:
                try:
                    limit_changes[attr] = parse(limits[key])
                except ValueError as exc:
                    raise ConfigError(
                        f"config file {path}: resourceLimits.{key} must be {exc}, got {_show(limits[key])}"
                    ) from None
        changes["resource_limits"] = replace(settings.resource_limits, **limit_changes)
    return replace(settings, **changes)


def _apply_environment(settings: Settings, environ: Mapping[str, str]) -> Settings:
    changes: dict[str, Any] = {}
    for name, (attr, parse) in ENVIRONMENT.items():
        if name not in environ:
            continue
        raw = environ[name]
        try:
            changes[attr] = parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if name == "WONDERCRAFT_ADMIN_TOKEN" else _show(raw)
            raise ConfigError(f"{name}={shown} is invalid: expected {exc}") from None
    return replace(settings, **changes)


def _check_consistency(settings: Settings) -> None:
    limits = settings.resource_limits
    if settings.sandbox_default_cpu_cores > limits.cpu_cores:
        raise ConfigError(
            f"SANDBOX_DEFAULT_CPU={settings.sandbox_default_cpu_cores:g} exceeds "
            f"resourceLimits.cpu={limits.cpu_cores:g}"
        )
    if settings.sandbox_default_memory_mb > limits.memory_mb:
        raise ConfigError(
            f"SANDBOX_DEFAULT_MEMORY={settings.sandbox_default_memory_mb} exceeds "
            f"resourceLimits.memory={limits.memory_mb}"
        )


def load_settings(config_path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, overridden by the --config file, overridden by the environment."""
    settings = Settings()
    if config_path is not None:
        settings = _apply_file(settings, config_path)
    settings = _apply_environment(settings, os.environ if environ is None else environ)
    _check_consistency(settings)
    return settings
