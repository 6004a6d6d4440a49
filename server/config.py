"""Service configuration: built-in defaults, then the scaling JSON (--config), then
environment variables. Later sources win; every value is validated on the way in."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from runtime.uids import UidRange

from .errors import ConfigError
from .vocabulary import EPOCHS_MAX

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


def _ray_address(raw: Any) -> str:
    expected = "a Ray cluster address, HOST:PORT (the head's GCS port)"
    if not isinstance(raw, str) or not raw or len(raw) > 300 or any(c.isspace() for c in raw):
        raise ValueError(expected)
    host, sep, port = raw.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(expected)
    return raw


def _uid_range(raw: Any) -> str:
    return str(UidRange.parse(raw))


def _warm_pool(raw: Any) -> str:
    from runtime.pool import parse_profiles
    from runtime.sandbox import InvalidSpec, ResourceCaps

    if not isinstance(raw, str):
        raise ValueError("a list like numpy=2,torch=1")
    try:
        parse_profiles(raw, ResourceCaps())
    except InvalidSpec as exc:
        raise ValueError(str(exc)) from None
    return raw.strip()


# ---- the settings: each declared once, with its default, its parser and where it is read ----


def setting(
    default: Any,
    parse: Callable[[Any], Any],
    *,
    env: str | None = None,
    key: str | None = None,
    secret: bool = False,
) -> Any:
    """A Settings field read from the environment variable `env` and/or the scaling JSON's `key`
    (as given), checked by `parse`; a `secret` value is never echoed in an error."""
    return field(default=default, metadata={"parse": parse, "env": env, "key": key, "secret": secret})


def section(kind: type, *, key: str) -> Any:
    """A nested object of the scaling JSON (resourceLimits), itself a dataclass of settings."""
    return field(default_factory=kind, metadata={"section": kind, "key": key})


@dataclass(frozen=True)
class ResourceLimits:
    """The most a single sandbox may ask for (the scaling JSON's resourceLimits)."""

    cpu_cores: float = setting(4.0, _number_between(0.0, 1024.0), key="cpu")
    memory_mb: int = setting(8192, _int_between(16, 262144), key="memory")
    gpu_count: int = setting(1, _int_between(0, 64), key="gpu")


AGGREGATION_METHODS = ("fedavg", "mean", "median", "trimmed_mean", "krum", "multi_krum")


@dataclass(frozen=True)
class Settings:
    """Every setting of the service; the README's configuration tables document them. Adding one
    is adding one line here."""

    # The seed's settings.
    max_concurrent_cycles: int = setting(
        10, _int_between(1, 1024), env="PETALS_MAX_CONCURRENT_CYCLES", key="maxConcurrentTrainingCycles"
    )
    default_learning_rate: float = setting(
        0.001, _number_between(0.0, 10.0), env="PETALS_DEFAULT_LEARNING_RATE"
    )
    default_batch_size: int = setting(32, _int_between(1, 65536), env="PETALS_DEFAULT_BATCH_SIZE")
    default_epochs: int = setting(10, _int_between(1, EPOCHS_MAX), env="PETALS_DEFAULT_EPOCHS")
    sandbox_default_cpu_cores: float = setting(2.0, _number_between(0.0, 1024.0), env="SANDBOX_DEFAULT_CPU")
    sandbox_default_memory_mb: int = setting(4096, _int_between(16, 262144), env="SANDBOX_DEFAULT_MEMORY")
    sandbox_max_lifetime_s: int = setting(
        3600, _int_between(1, 604800), env="SANDBOX_MAX_LIFETIME", key="maxSandboxLifetime"
    )
    sandbox_cleanup_interval_s: int = setting(300, _int_between(1, 86400), env="SANDBOX_CLEANUP_INTERVAL")
    telemetry_retention_days: int = setting(7, _int_between(1, 3650), env="TELEMETRY_RETENTION_DAYS")
    telemetry_batch_size: int = setting(100, _int_between(1, 100000), env="TELEMETRY_BATCH_SIZE")
    telemetry_flush_interval_s: float = setting(
        60.0, _number_between(0.0, 86400.0), env="TELEMETRY_FLUSH_INTERVAL"
    )
    resource_limits: ResourceLimits = section(ResourceLimits, key="resourceLimits")
    aggregation_threshold: float = setting(0.67, _number_between(0.0, 1.0), key="aggregationThreshold")
    consensus_required: bool = setting(True, _boolean, key="consensusRequired")
    admin_token: str | None = setting(None, _token, env="WONDERCRAFT_ADMIN_TOKEN", secret=True)
    # Beyond the seed: operational knobs with conservative defaults.
    petals_max_queue_depth: int = setting(1000, _int_between(1, 1000000), env="PETALS_MAX_QUEUE_DEPTH")
    petals_max_retries: int = setting(3, _int_between(0, 100), env="PETALS_MAX_RETRIES")
    petals_retry_base_delay_s: float = setting(
        1.0, _number_between(0.0, 3600.0), env="PETALS_RETRY_BASE_DELAY"
    )
    # Round policy defaults for models defined without one (min clients None: 2 once two agents
    # train the model, 1 before).
    petals_round_deadline_s: float = setting(
        300.0, _number_between(0.0, 86400.0), env="PETALS_ROUND_DEADLINE", key="roundDeadlineSeconds"
    )
    petals_round_window_s: float = setting(
        0.0, _number_between(0.0, 86400.0, lo_open=False), env="PETALS_ROUND_WINDOW", key="roundWindowSeconds"
    )
    petals_min_clients: int | None = setting(
        None, _int_between(1, 10000), env="PETALS_MIN_CLIENTS", key="minClients"
    )
    petals_allow_partial: bool = setting(False, _boolean, env="PETALS_ALLOW_PARTIAL", key="allowPartial")
    # The seed's flow: the first job for an unknown modelType creates the model.
    auto_create_models: bool = setting(
        False, _boolean, env="PETALS_AUTO_CREATE_MODELS", key="autoCreateModels"
    )
    petals_max_model_parameters: int = setting(
        20_000_000, _int_between(1, 2_000_000_000), env="PETALS_MAX_MODEL_PARAMETERS"
    )
    sandbox_default_storage_mb: int = setting(512, _int_between(1, 1048576), env="SANDBOX_DEFAULT_STORAGE")
    sandbox_default_pids: int = setting(256, _int_between(8, 65536), env="SANDBOX_DEFAULT_PIDS")
    sandbox_output_limit_bytes: int = setting(
        1 << 20, _int_between(1024, 1 << 30), env="SANDBOX_OUTPUT_LIMIT"
    )
    shutdown_grace_s: float = setting(
        30.0, _number_between(0.0, 3600.0, lo_open=False), env="WONDERCRAFT_SHUTDOWN_GRACE"
    )
    rootfs_image: str | None = setting(None, _path, env="WONDERCRAFT_ROOTFS_IMAGE")
    aggregation_method: str = setting("fedavg", _one_of(*AGGREGATION_METHODS), key="aggregationMethod")
    max_update_norm: float = setting(1000.0, _number_between(0.0, 1e12), key="maxUpdateNorm")
    validation_tolerance: float = setting(
        0.02, _number_between(0.0, 1e6, lo_open=False), key="validationTolerance"
    )
    learn_command: tuple[str, ...] = setting(
        ("python", "/opt/wondercraft/learn_cycle.py"), _argv, key="learnCommand"
    )
    # Bring your own model: uploads of datasets and programs.
    dataset_max_bytes: int = setting(2 << 30, _int_between(1024, 1 << 40), env="PETALS_DATASET_MAX_BYTES")
    dataset_quota_bytes: int = setting(
        10 << 30, _int_between(1024, 1 << 44), env="PETALS_DATASET_QUOTA_BYTES"
    )
    # A multipart model registration, all parts together (program, parameters, graph).
    model_upload_max_bytes: int = setting(
        1 << 30, _int_between(1024, 1 << 40), env="PETALS_MODEL_UPLOAD_MAX_BYTES"
    )
    program_max_bytes: int = setting(16 << 20, _int_between(1024, 1 << 30), env="PETALS_PROGRAM_MAX_BYTES")
    program_max_unpacked_bytes: int = setting(
        64 << 20, _int_between(1024, 1 << 34), env="PETALS_PROGRAM_MAX_UNPACKED_BYTES"
    )
    # Admission (runtime/admission.py) and sandbox uids (runtime/uids.py); 0: no per-agent cap.
    sandbox_host_memory_share_percent: int = setting(
        80, _int_between(1, 100), env="SANDBOX_HOST_MEMORY_SHARE"
    )
    sandbox_service_reserve_mb: int = setting(1024, _int_between(0, 1048576), env="SANDBOX_SERVICE_RESERVE")
    sandbox_cpu_overcommit: float = setting(16.0, _number_between(0.0, 1024.0), env="SANDBOX_CPU_OVERCOMMIT")
    sandbox_agent_max_sandboxes: int = setting(
        64, _int_between(1, 1000000), env="SANDBOX_AGENT_MAX_SANDBOXES"
    )
    sandbox_agent_max_memory_mb: int = setting(0, _int_between(0, 1 << 30), env="SANDBOX_AGENT_MAX_MEMORY")
    sandbox_agent_max_gpus: int = setting(0, _int_between(0, 64), env="SANDBOX_AGENT_MAX_GPUS")
    sandbox_uid_range: str = setting("600000-659999", _uid_range, env="SANDBOX_UID_RANGE")
    # Pre-warmed learn-cycle sandboxes (runtime/pool.py): "numpy=N,torch=M"; "" (the default) is off.
    warm_pool: str = setting("", _warm_pool, env="WARM_POOL")
    warm_pool_idle_s: int = setting(600, _int_between(1, 86400), env="WARM_POOL_IDLE")
    # Compile the aggregation kernels during start-up, before READY (numba's cache makes it quick).
    aggregation_precompile: bool = setting(True, _boolean, env="AGGREGATION_PRECOMPILE")
    # Where learn cycles run (server/training/executors.py): here, or as Ray tasks on the nodes of
    # the cluster at RAY_ADDRESS (README "Across hosts").
    executor: str = setting("local", _one_of("local", "ray"), env="WONDERCRAFT_EXECUTOR")
    ray_address: str | None = setting(None, _ray_address, env="RAY_ADDRESS")


# Environment variable -> its Settings field, read from the declarations above.
ENVIRONMENT: dict[str, Field] = {f.metadata["env"]: f for f in fields(Settings) if f.metadata.get("env")}


def _show(raw: Any) -> str:
    text = json.dumps(raw) if not isinstance(raw, str) else repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


def _apply_object(current: Any, document: dict, source: str, path: str = "") -> Any:
    """`current` (Settings, or the section of it at `path`, e.g. "resourceLimits") with the values
    an object of the scaling JSON gives; `source` names the file in errors."""
    keyed = {f.metadata["key"]: f for f in fields(current) if f.metadata.get("key")}
    unknown = sorted(set(document) - set(keyed))
    if unknown:
        subject = f"{source}: {path}" if path else source
        raise ConfigError(
            f"{subject} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(keyed))}"
        )
    changes: dict[str, Any] = {}
    for key, spec in keyed.items():
        if key not in document:
            continue
        raw, dotted = document[key], f"{path}.{key}" if path else key
        if "section" in spec.metadata:
            if not isinstance(raw, dict):
                raise ConfigError(f"{source}: {dotted} must be an object")
            changes[spec.name] = _apply_object(getattr(current, spec.name), raw, source, dotted)
            continue
        try:
            changes[spec.name] = spec.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {dotted} must be {exc}, got {_show(raw)}") from None
    return replace(current, **changes)


def _apply_file(settings: Settings, path: Path) -> Settings:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must hold a JSON object, got {type(document).__name__}")
    return _apply_object(settings, document, f"config file {path}")


def _apply_environment(settings: Settings, environ: Mapping[str, str]) -> Settings:
    changes: dict[str, Any] = {}
    for name, spec in ENVIRONMENT.items():
        if name not in environ:
            continue
        raw = environ[name]
        try:
            changes[spec.name] = spec.metadata["parse"](raw)
        except ValueError as exc:
            shown = "(hidden)" if spec.metadata["secret"] else _show(raw)
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


def _check_rounds(settings: Settings) -> None:
    if settings.petals_round_window_s > settings.petals_round_deadline_s:
        raise ConfigError(
            f"PETALS_ROUND_WINDOW={settings.petals_round_window_s:g} exceeds "
            f"PETALS_ROUND_DEADLINE={settings.petals_round_deadline_s:g}: a round could never use its window"
        )


def _check_executor(settings: Settings) -> None:
    if settings.executor == "ray" and not settings.ray_address:
        raise ConfigError("WONDERCRAFT_EXECUTOR=ray needs RAY_ADDRESS (the head's HOST:PORT)")


def load_settings(config_path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, overridden by the --config file, overridden by the environment."""
    settings = Settings()
    if config_path is not None:
        settings = _apply_file(settings, config_path)
    settings = _apply_environment(settings, os.environ if environ is None else environ)
    _check_consistency(settings)
    _check_rounds(settings)
    _check_executor(settings)
    return settings
