"""The stock learn program of the four built-in families (linear, logistic, softmax, mlp),
under the same contract as any model's own program (rootfs/README.md): /job.json names the
model's signature among its hyperparameters, /model/base.safetensors holds the base version,
/data/batch.npz (or a dataset's x and y) the examples; the deltas and metrics go to /out.
The math is rootfs/models.py.

Test knob: WONDERCRAFT_TEST_START_DELAY_MS=N (set through the learn command, e.g. with `env`)
makes the cycle wait a random 0..N ms before it starts, so tests can shuffle completions."""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time

import models
import numpy as np
import safetensors.numpy
import wondercraft_learn as wl


def main() -> int:
    delay_ms = float(os.environ.get("WONDERCRAFT_TEST_START_DELAY_MS", "0") or 0)
    if delay_ms > 0:
        time.sleep(random.uniform(0.0, delay_ms) / 1000.0)
    started = time.monotonic()
    job = wl.job()
    signature = models.Signature.from_dict(job["hyperparameters"]["signature"])
    data = wl.read_data()
    x, y = data["x"], data["y"]
    base = wl.read_base()
    trained, history = models.train(
        signature,
        base,
        x,
        y,
        learning_rate=float(job["learningRate"]),
        batch_size=int(job["batchSize"]),
        epochs=int(job["epochs"]),
        seed=int(job["seed"]),
        on_epoch=lambda entry: wl.report(entry["epoch"], entry["loss"], entry["accuracy"]),
    )
    # Written as they came out, finite or not: the service judges them (a diverged run is
    # its bad_output, named by tensor), not this program.
    deltas = {name: np.ascontiguousarray(trained[name] - base[name], dtype=np.float32) for name in base}
    wl.out_dir().mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(
        deltas, str(wl.out_dir() / wl.DELTAS_FILE), metadata={wl.ORDER_KEY: json.dumps(list(base))}
    )
    final = history[-1] if history else {}
    finite = {k: v for k, v in final.items() if k in ("loss", "accuracy") and math.isfinite(v)}
    wl.write_metrics(len(x), duration=time.monotonic() - started, **finite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
