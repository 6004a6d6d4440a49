"""The learn cycle, run inside a sandbox: train from the read-only base model on the
read-only data batch and print the deltas (trained - base) as JSON on stdout.

Inputs: /data/job.json (signature, hyperparameters, seed), /data/batch.npz (x, y),
/model/base.npz. Progress goes to stderr as one JSON object per epoch.

Test knob: WONDERCRAFT_TEST_START_DELAY_MS=N (set through the learn command, e.g. with `env`)
makes the cycle wait a random 0..N ms before it starts, so tests can shuffle completions."""

from __future__ import annotations

import base64
import json
import os
import random
import sys
import time

import models
import numpy as np


def encode(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return {
        "shape": list(array.shape),
        "dtype": "float32",
        "data": base64.b64encode(array.tobytes()).decode(),
    }


def main(data_dir: str = "/data", base_path: str = "/model/base.npz") -> int:
    delay_ms = float(os.environ.get("WONDERCRAFT_TEST_START_DELAY_MS", "0") or 0)
    if delay_ms > 0:
        time.sleep(random.uniform(0.0, delay_ms) / 1000.0)
    started = time.monotonic()
    with open(f"{data_dir}/job.json") as handle:
        job = json.load(handle)
    signature = models.Signature.from_dict(job["signature"])
    with np.load(f"{data_dir}/batch.npz", allow_pickle=False) as batch:
        x, y = batch["x"], batch["y"]
    base = models.load(base_path)
    epochs = int(job["epochs"])

    def report(entry: dict) -> None:
        progress = {
            "epoch": entry["epoch"],
            "epochs": epochs,
            "loss": entry["loss"],
            "accuracy": entry["accuracy"],
        }
        print(json.dumps({"progress": progress}), file=sys.stderr, flush=True)

    trained, history = models.train(
        signature,
        base,
        x,
        y,
        learning_rate=float(job["learningRate"]),
        batch_size=int(job["batchSize"]),
        epochs=epochs,
        seed=int(job["seed"]),
        on_epoch=report,
    )
    deltas = {name: encode(trained[name] - base[name]) for name in models.tensor_names(signature)}
    final = history[-1]
    result = {
        "numSamples": int(len(x)),
        "metrics": {
            "loss": final["loss"],
            "accuracy": final["accuracy"],
            "duration": time.monotonic() - started,
        },
        "epochs": history,
        "deltas": deltas,
    }
    json.dump(result, sys.stdout, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
