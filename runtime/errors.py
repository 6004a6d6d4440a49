"""The runtime's typed errors; the service maps each to an HTTP answer."""

from __future__ import annotations


class SandboxError(Exception):
    code = "sandbox_error"


class InvalidSpec(SandboxError):
    code = "invalid_spec"


class CapacityExhausted(SandboxError):
    code = "capacity"


class StartFailed(SandboxError):
    code = "start_failed"


class SandboxNotRunning(SandboxError):
    code = "not_running"


class UnknownSandbox(SandboxError):
    code = "not_found"


class UnknownExecution(SandboxError):
    code = "not_found"
