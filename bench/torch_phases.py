"""The digits CNN learn program with a timestamp after each phase, for bench/torch_cycle.py:
it prints {"stamps": {started, torch, data, trained}} (seconds since the epoch) on stderr's
last line. `started` is the script's first statement, so the launcher's and the interpreter's
start-up lie before it."""

import time

stamps = {"started": time.time()}

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402, F401

stamps["torch"] = time.time()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import digits_cnn  # noqa: E402
import wondercraft_learn as wl  # noqa: E402

read_data = wl.read_data


def timed_read_data():
    data = read_data()
    stamps["data"] = time.time()
    return data


wl.read_data = timed_read_data
digits_cnn.train()
stamps["trained"] = time.time()
print(json.dumps({"stamps": stamps}), file=sys.stderr, flush=True)
