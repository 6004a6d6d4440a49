"""The helper a learn program imports inside its sandbox (`import wondercraft_learn as wl`):
its inputs (`read_base`, `read_data`, `job`), its outputs (`write_deltas`, `write_metrics`),
progress (`report`), and `run_numpy_client`, which runs a Flower NumPyClient's `fit` as the
whole program. Only numpy and safetensors are needed; Flower itself need not be installed.

The paths are the sandbox contract (rootfs/README.md); WONDERCRAFT_LEARN_ROOT moves them
all under another directory, to run a program outside a sandbox."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

ROOT_ENV = "WONDERCRAFT_LEARN_ROOT"
# The metadata key the service writes the model's tensor order under (server/artifacts/tensors.py).
ORDER_KEY = "tensor_order"
DELTAS_FILE = "deltas.safetensors"
METRICS_FILE = "metrics.json"


class ContractError(Exception):
    """The program's inputs or outputs do not follow the sandbox contract."""


# ---- where things are ----


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV, "/"))


def base_path() -> Path:
    return root() / "model" / "base.safetensors"


def data_dir() -> Path:
    return root() / "data"


def job_path() -> Path:
    return root() / "job.json"


def out_dir() -> Path:
    return root() / "out"


# ---- inputs ----


def job() -> dict[str, Any]:
    """/job.json: learningRate, batchSize, epochs, seed, numSamples and `hyperparameters`."""
    with open(job_path()) as handle:
        return json.load(handle)


def _order(path: Path, names: Sequence[str]) -> list[str]:
    with safetensors.safe_open(str(path), framework="np") as handle:
        metadata = handle.metadata() or {}
    if ORDER_KEY in metadata:
        order = json.loads(metadata[ORDER_KEY])
        if sorted(order) == sorted(names):
            return list(order)
    return sorted(names)


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    tensors = safetensors.numpy.load_file(str(path))
    # Writable copies in the model's order: a program may train them in place.
    return {name: np.array(tensors[name]) for name in _order(path, list(tensors))}


def read_base() -> dict[str, np.ndarray]:
    """The current version's tensors (float32), in the model's order."""
    return _load_safetensors(base_path())


def base_names() -> list[str]:
    """The base's tensor names in the model's order (Flower's parameter list follows it)."""
    return list(read_base())


def read_data() -> dict[str, np.ndarray]:
    """Every array of every .npz and .safetensors file in /data (a dataset, or the JSON
    dataBatch written as batch.npz with x and y); an .npz never unpickles."""
    arrays: dict[str, np.ndarray] = {}
    for path in sorted(data_dir().iterdir()):
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                found = {name: archive[name] for name in archive.files}
        elif path.suffix == ".safetensors":
            found = _load_safetensors(path)
        else:
            continue
        for name, array in found.items():
            if name in arrays:
                raise ContractError(f"array {name!r} is in more than one file of {data_dir()}")
            arrays[name] = array
    if not arrays:
        raise ContractError(f"{data_dir()} holds no .npz or .safetensors file")
    return arrays


# ---- outputs ----


def _write_atomically(path: Path, data: bytes) -> Path:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)
    return path


def write_deltas(deltas: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray] | None = None) -> Path:
    """Writes /out/deltas.safetensors: (trained - base) for every base tensor, as float32. The
    names and shapes are checked against the base here, so a mistake is reported by name now
    rather than as the cycle's bad_output later."""
    base = read_base() if base is None else base
    missing = [name for name in base if name not in deltas]
    extra = [name for name in deltas if name not in base]
    if missing or extra:
        raise ContractError(
            f"deltas must name exactly the base's tensors; missing {missing}, unexpected {extra}"
        )
    arrays: dict[str, np.ndarray] = {}
    for name, reference in base.items():
        array = np.ascontiguousarray(np.asarray(deltas[name], dtype=np.float32))
        if array.shape != reference.shape:
            raise ContractError(
                f"delta {name!r} has shape {list(array.shape)}; the base's is {list(reference.shape)}"
            )
        if not np.isfinite(array).all():
            raise ContractError(f"delta {name!r} holds a non-finite value")
        arrays[name] = array
    data = safetensors.numpy.save(arrays, metadata={ORDER_KEY: json.dumps(list(base))})
    out_dir().mkdir(parents=True, exist_ok=True)
    return _write_atomically(out_dir() / DELTAS_FILE, data)


def write_trained(trained: Mapping[str, np.ndarray]) -> Path:
    """Writes the deltas of `trained` (the tensors after training, same names as the base)
    against the base as read afresh from /model: right even if training changed the arrays
    read_base() returned in place (torch.from_numpy shares their memory)."""
    base = read_base()
    missing = [name for name in base if name not in trained]
    if missing:
        raise ContractError(f"trained tensors must name every base tensor; missing {missing}")
    deltas = {name: np.asarray(trained[name], dtype=np.float32) - base[name] for name in base}
    deltas.update({name: trained[name] for name in trained if name not in base})  # refused by name below
    return write_deltas(deltas, base)


def _finite_number(name: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ContractError(f"metric {name!r} must be a number, got {type(value).__name__}")
    value = value.item() if isinstance(value, np.generic) else value
    if not math.isfinite(value):
        raise ContractError(f"metric {name!r} must be finite, got {value}")
    return value


def write_metrics(
    num_samples: int, loss: float | None = None, accuracy: float | None = None, **more: float
) -> Path:
    """Writes /out/metrics.json: numSamples (the examples trained on), loss, accuracy and any
    other numbers, flat."""
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ContractError(f"num_samples must be a positive integer, got {num_samples!r}")
    metrics: dict[str, float | int] = {"numSamples": int(num_samples)}
    for name, value in {"loss": loss, "accuracy": accuracy, **more}.items():
        if value is not None:
            metrics[name] = _finite_number(name, value)
    out_dir().mkdir(parents=True, exist_ok=True)
    return _write_atomically(out_dir() / METRICS_FILE, json.dumps(metrics).encode())


def report(epoch: int, loss: float, accuracy: float | None = None, **more: float) -> None:
    """One progress line on stderr, the one the service shows as the cycle's progress."""
    progress: dict[str, Any] = {"epoch": int(epoch), "loss": float(loss)}
    try:
        progress["epochs"] = int(job()["epochs"])
    except (OSError, KeyError, TypeError, ValueError):
        pass
    if accuracy is not None:
        progress["accuracy"] = float(accuracy)
    progress.update({name: _finite_number(name, value) for name, value in more.items()})
    print(json.dumps({"progress": progress}), file=sys.stderr, flush=True)


# ---- Flower ----


def flower_config(description: Mapping[str, Any] | None = None) -> dict[str, bool | int | float | str]:
    """The config a Flower client's fit gets: the job's hyperparameters, then learningRate,
    batchSize, epochs, seed and numSamples; scalars only, as Flower's Config is."""
    description = job() if description is None else description
    config = dict(description.get("hyperparameters") or {})
    for key in ("learningRate", "batchSize", "epochs", "seed", "numSamples"):
        if key in description:
            config[key] = description[key]
    return {k: v for k, v in config.items() if isinstance(v, bool | int | float | str)}


def run_numpy_client(client: Any, *, names: Sequence[str] | None = None) -> int:
    """Runs `client.fit(parameters, config) -> (parameters, num_examples, metrics)` (a Flower
    NumPyClient, or anything with that method) as the learn program. `parameters` is the base's
    tensors in `names` order (default: the model's order); the returned list, in the same order,
    becomes the deltas (returned - base), num_examples the numSamples, numeric metrics the rest."""
    base = read_base()
    names = list(names) if names is not None else list(base)
    if sorted(names) != sorted(base):
        raise ContractError(f"names must list every base tensor once; the base has {list(base)}")
    result = client.fit([base[name].copy() for name in names], flower_config())
    if not isinstance(result, tuple | list) or len(result) != 3:
        raise ContractError("fit must return (parameters, num_examples, metrics)")
    parameters, num_examples, metrics = result
    if len(parameters) != len(names):
        raise ContractError(f"fit returned {len(parameters)} arrays; the model has {len(names)} ({names})")
    trained = dict(zip(names, parameters, strict=True))
    write_deltas({name: np.asarray(trained[name], dtype=np.float32) - base[name] for name in base}, base)
    numbers = {
        k: v
        for k, v in (metrics or {}).items()
        if isinstance(v, int | float | np.integer | np.floating)
        and not isinstance(v, bool)
        and k != "numSamples"
    }
    write_metrics(int(num_examples), **numbers)
    return 0


def _load_object(spec: str) -> Any:
    """FILE.py:NAME (or MODULE:NAME) -> that object."""
    location, _, attribute = spec.rpartition(":")
    if not location or not attribute:
        raise ContractError(f"expected FILE.py:NAME or MODULE:NAME, got {spec!r}")
    if location.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location("learn_program", location)
        if module_spec is None or module_spec.loader is None:
            raise ContractError(f"cannot load {location}")
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(Path(location).resolve().parent))
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(location)
    return getattr(module, attribute)


def main(argv: Sequence[str]) -> int:
    """`python wondercraft_learn.py flower FILE.py:NAME`: NAME is a NumPyClient, its class, or a
    function of no arguments returning one."""
    if len(argv) != 2 or argv[0] != "flower":
        print("usage: wondercraft_learn.py flower FILE.py:NAME", file=sys.stderr)
        return 2
    target = _load_object(argv[1])
    # An instance is the client; a class or a factory function makes one.
    client = target if hasattr(target, "fit") and not isinstance(target, type) else target()
    return run_numpy_client(client)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
