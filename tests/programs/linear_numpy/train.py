"""A numpy learn program of its own (no ONNX graph): linear regression on /data's x and y,
tensors fc.weight (features x 1) and fc.bias (1)."""

import numpy as np
import wondercraft_learn as wl

job, base, data = wl.job(), wl.read_base(), wl.read_data()
x, y = data["x"].astype(np.float32), data["y"].astype(np.float32).reshape(-1, 1)
w, b = base["fc.weight"].copy(), base["fc.bias"].copy()
rate = float(job["hyperparameters"].get("rate", job["learningRate"]))
print(f"training on {len(x)} rows at rate {rate}")
for epoch in range(int(job["epochs"])):
    error = x @ w + b - y
    w -= rate * x.T @ error / len(x)
    b -= rate * error.mean(axis=0)
    wl.report(epoch + 1, float((error**2).mean()))
wl.write_deltas({"fc.weight": w - base["fc.weight"], "fc.bias": b - base["fc.bias"]})
wl.write_metrics(len(x), loss=float(((x @ w + b - y) ** 2).mean()))
