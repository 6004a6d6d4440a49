"""A learn program that misbehaves as its model's name says (`linear:<behaviour>`), run as the
service's learn command (`python -c` with this source): each behaviour is one way a hostile
or broken program can fail. `ok` and `slow` train as the stock program does."""

import json
import os
import runpy
import socket
import sys
import time

import numpy as np
import safetensors.numpy

STATE_DIR = "@STATE_DIR@"  # the service's state directory on the host, filled in by the test
OUT = "/out"
BEHAVIOUR = json.load(open("/job.json"))["modelType"].partition(":")[2].split("-")[0]


def deltas(tensors, **metadata):
    os.makedirs(OUT, exist_ok=True)
    safetensors.numpy.save_file(tensors, f"{OUT}/deltas.safetensors", metadata=metadata or None)


def metrics(body):
    with open(f"{OUT}/metrics.json", "w") as handle:
        handle.write(body if isinstance(body, str) else json.dumps(body))


W, B = np.zeros((1, 1), np.float32), np.zeros((1,), np.float32)
GOOD_METRICS = {"numSamples": 4, "loss": 0.5}

if BEHAVIOUR in ("ok", "slow"):
    print("hello from the program")
    print("a line on stderr", file=sys.stderr)
    if BEHAVIOUR == "slow":
        time.sleep(4)
    sys.argv = ["/opt/wondercraft/learn_cycle.py"]
    runpy.run_path("/opt/wondercraft/learn_cycle.py", run_name="__main__")
elif BEHAVIOUR == "missing":
    metrics(GOOD_METRICS)
elif BEHAVIOUR == "extra":
    deltas({"layer0.weight": W, "layer0.bias": B, "smuggled": B})
    metrics(GOOD_METRICS)
elif BEHAVIOUR == "misnamed":
    deltas({"layer0.weights": W, "layer0.bias": B})
    metrics(GOOD_METRICS)
elif BEHAVIOUR == "misshaped":
    deltas({"layer0.weight": np.zeros((2, 1), np.float32), "layer0.bias": B})
    metrics(GOOD_METRICS)
elif BEHAVIOUR == "float64":
    deltas({"layer0.weight": W.astype(np.float64), "layer0.bias": B})
    metrics(GOOD_METRICS)
elif BEHAVIOUR == "nan":
    deltas({"layer0.weight": np.full((1, 1), np.nan, np.float32), "layer0.bias": B})
    metrics(GOOD_METRICS)
elif BEHAVIOUR == "oversize":
    deltas({"layer0.weight": W, "layer0.bias": B}, pad="x" * 300_000)
    metrics(GOOD_METRICS)
elif BEHAVIOUR == "badmetrics":
    deltas({"layer0.weight": W, "layer0.bias": B})
    metrics("[1, 2, 3]")
elif BEHAVIOUR == "inflated":
    deltas({"layer0.weight": W, "layer0.bias": B})
    metrics({"numSamples": 10**9})
elif BEHAVIOUR == "linked":
    os.makedirs(OUT, exist_ok=True)
    os.symlink("/model/base.safetensors", f"{OUT}/deltas.safetensors")
    metrics(GOOD_METRICS)
elif BEHAVIOUR == "noout":
    pass
elif BEHAVIOUR == "garbage":
    sys.stdout.buffer.write(os.urandom(3 << 20))
elif BEHAVIOUR == "network":
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=3).close()
    except OSError as exc:
        sys.exit(f"network: {exc}")
    deltas({"layer0.weight": W, "layer0.bias": B})
    metrics(GOOD_METRICS)
elif BEHAVIOUR == "forkbomb":
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)
elif BEHAVIOUR == "bigwrite":
    block = b"\0" * (1 << 20)
    with open("/work/big", "wb") as handle:
        for _ in range(10 * 1024):  # 10 GB
            handle.write(block)
elif BEHAVIOUR == "sleep":
    time.sleep(600)
elif BEHAVIOUR == "writemodel":
    try:
        with open("/model/base.safetensors", "r+b") as handle:
            handle.write(b"\0" * 16)
    except OSError as exc:
        sys.exit(f"writemodel: {exc}")
    deltas({"layer0.weight": W, "layer0.bias": B})
    metrics(GOOD_METRICS)
elif BEHAVIOUR == "snoop":
    # Another agent's dataset, by its path on the host and by a guess inside the sandbox.
    for path in (f"{STATE_DIR}/datasets", "/data/../datasets", "/proc/1/root/datasets"):
        try:
            found = os.listdir(path)
        except OSError as exc:
            print(f"snoop {path}: {exc}", file=sys.stderr)
        else:
            sys.exit(f"snoop: {path} lists {found}")
    sys.exit("snoop: nothing reachable")
else:
    sys.exit(f"unknown behaviour {BEHAVIOUR!r}")
