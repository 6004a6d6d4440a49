"""A Flower-style NumPyClient, unchanged by the service (duck-typed: flwr is not needed):
fit(parameters, config) -> (parameters, num_examples, metrics). Run with
`python /opt/wondercraft/wondercraft_learn.py flower /program/client.py:LinearClient`."""

import wondercraft_learn as wl
from linear_math import step


class LinearClient:
    def fit(self, parameters, config):
        data = wl.read_data()
        x, y = data["x"], data["y"].reshape(-1, 1)
        w, b = parameters
        for _ in range(int(config["epochs"])):
            w, b, loss = step(w, b, x, y, float(config["learningRate"]))
        return [w, b], len(x), {"loss": loss}
