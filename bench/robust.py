"""Robust and private federation, measured through the product: scikit-learn's digits, five
agents with non-IID shards (Dirichlet over labels), ten rounds of one job per agent, and one
agent malicious in one of three ways: its labels flipped, its features scaled by 1000, or a
learning rate of 10 (the most the API allows). Held-out accuracy at the last round, through
the predict endpoint, for each aggregation method x attack beside no attack; then client-level
DP at epsilon 8 and 2 (delta 1e-5) beside no DP. The test suite runs a few of these cells."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .service import Service, call

AGENTS = 5
ROUNDS = 10
ATTACKS = ("none", "label_flip", "scale_x1000", "lr_10")
# (label, aggregation, screening on?)
METHODS = (
    ("fedavg", {"method": "fedavg"}, False),
    ("fedavg+screening", {"method": "fedavg"}, True),
    ("median", {"method": "median"}, False),
    ("trimmed_mean", {"method": "trimmed_mean", "beta": 0.2}, False),
    ("krum", {"method": "krum", "f": 1}, False),
    ("multi_krum", {"method": "multi_krum", "f": 1, "m": 3}, False),
)
PRIVACY = (("no DP", None), ("epsilon 8", 8.0), ("epsilon 2", 2.0))
DELTA = 1e-5
CLIP_NORM = 2.0
JOB = {"learningRate": 0.3, "batchSize": 32, "epochs": 4}


@dataclass
class Digits:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    shards: list[np.ndarray] = field(default_factory=list)


def digits(alpha: float = 2.0, seed: int = 0) -> Digits:
    """Digits scaled to 0..1; 360 held out; the rest split over the agents by a Dirichlet(alpha)
    draw per class (smaller alpha: less alike shards)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[:360], order[360:]
    rng = np.random.default_rng(seed + 1)
    parts: list[list[int]] = [[] for _ in range(AGENTS)]
    for label in range(10):
        members = train[y[train] == label]
        rng.shuffle(members)
        cuts = (np.cumsum(rng.dirichlet([alpha] * AGENTS)) * len(members)).astype(int)[:-1]
        for k, piece in enumerate(np.split(members, cuts)):
            parts[k] += piece.tolist()
    return Digits(x, y.astype(np.float32), x[test], y[test], [np.array(p) for p in parts])


def job(model: str, data: Digits, agent: int, attack: str, seed: int) -> dict:
    rows = data.shards[agent]
    x, y = data.train_x[rows], data.train_y[rows]
    params = dict(JOB)
    if agent == 0 and attack == "label_flip":
        y = 9.0 - y
    if agent == 0 and attack == "scale_x1000":
        x = x * 1000.0
    if agent == 0 and attack == "lr_10":
        params["learningRate"] = 10.0
    return {
        "modelType": model,
        "dataBatch": [{"x": [float(v) for v in r], "y": float(label)} for r, label in zip(x, y, strict=True)],
        "trainingParams": params,
        "resourceCaps": {"cpu": 0.5, "memory": 256},
        "seed": seed,
    }


def define(url: str, admin: str, model: str, policy: dict) -> dict:
    body = {"modelType": model, "modelConfig": {"inputDim": 64, "numClasses": 10}, "roundPolicy": policy}
    status, answer = call("POST", f"{url}/v1/petals/models", body, token=admin)
    assert status == 201, answer
    return answer


def policy(aggregation: dict, screening: bool, epsilon: float | None = None, **extra) -> dict:
    # Krum needs 2f + 3 updates in every round it aggregates.
    krum = aggregation["method"] in ("krum", "multi_krum")
    # Every agent's cycle joins each round: the jobs go in at once, and the round stays open for
    # enrolment for a second, so a cycle that starts warm (WARM_POOL) and ends at once cannot
    # close its round before the others enrolled.
    out = {
        "minClients": 2 * aggregation.get("f", 0) + 3 if krum else 3,
        "aggregationThreshold": 1.0,
        "roundWindowSeconds": 1.0,
        "roundDeadlineSeconds": 600,
        "aggregation": aggregation,
        "screening": {"enabled": screening},
        **extra,
    }
    if epsilon is not None:
        out["privacy"] = {
            "targetEpsilon": epsilon,
            "delta": DELTA,
            "plannedRounds": ROUNDS,
            "clipNorm": CLIP_NORM,
        }
    return out


def wait_round(url: str, tokens: list[str], cycles: list[str], timeout: float = 600.0) -> list[dict]:
    """Every cycle of a round ended: aggregated, failed, or completed with its round's outcome."""
    deadline = time.monotonic() + timeout
    ends: list[dict] = []
    while time.monotonic() < deadline:
        ends = [
            call("GET", f"{url}/v1/petals/status/{c}", token=t)[1]
            for t, c in zip(tokens, cycles, strict=True)
        ]
        if all(e["status"] in ("aggregated", "failed") or "round" in e.get("result", {}) for e in ends):
            return ends
        time.sleep(0.1)
    raise TimeoutError(f"round did not end: {[e.get('status') for e in ends]}")


def accuracy(url: str, token: str, model: str, data: Digits) -> float:
    inputs = [[float(v) for v in row] for row in data.test_x]
    status, body = call("POST", f"{url}/v1/petals/model/shared/predict", {"modelType": model, "inputs": inputs},
                        token=token)  # fmt: skip
    assert status == 200, body
    outputs = np.array(body["outputs"])
    if not np.isfinite(outputs).all():
        return 0.0
    return float((outputs.argmax(axis=1) == data.test_y).mean())


def federate(url: str, admin: str, tokens: list[str], model: str, data: Digits, attack: str,
             rounds: int = ROUNDS) -> dict:  # fmt: skip
    """Run `rounds` rounds of one job per agent; the held-out accuracy and what each round did."""
    committed, excluded, rejected = 0, 0, 0
    for r in range(rounds):
        jobs = [job(model, data, k, attack, 100 * r + k) for k in range(len(tokens))]

        def submit(k: int, jobs: list[dict] = jobs) -> tuple[int, dict]:
            return call("POST", f"{url}/v1/petals/train", jobs[k], token=tokens[k])

        # The first (the attacker's) alone: a refusal of it ends the run before the others go in.
        answers = [submit(0)]
        if answers[0][0] == 202:
            with ThreadPoolExecutor(len(tokens)) as pool:
                answers += list(pool.map(submit, range(1, len(tokens))))
        for status, body in answers:
            if status != 202:
                return {"accuracy": accuracy(url, tokens[1], model, data), "rounds": r, "committed": committed,
                        "excluded": excluded, "rejected": rejected, "refused": body}  # fmt: skip
        cycles = [body["cycleId"] for _, body in answers]
        ends = wait_round(url, tokens, cycles)
        outcomes = [e.get("result", {}).get("round", {}).get("outcome") for e in ends]
        committed += any(e["status"] == "aggregated" for e in ends)
        excluded += outcomes.count("excluded")
        rejected += all(o != "committed" for o in outcomes) and not any(
            e["status"] == "aggregated" for e in ends
        )
    return {"accuracy": accuracy(url, tokens[1], model, data), "rounds": rounds, "committed": committed,
            "excluded": excluded, "rejected": rejected}  # fmt: skip


def run() -> dict:
    data = digits()
    figures: dict = {"methods": {}, "privacy": {}}
    with Service(PETALS_MAX_CONCURRENT_CYCLES="5") as service:
        tokens = [service.agent(f"robust{k}") for k in range(AGENTS)]
        admin = "bench-admin-token-0123456789abcdef"
        for label, aggregation, screening in METHODS:
            row = {}
            for attack in ATTACKS:
                model = f"softmax:{label.replace('+', '-')}-{attack}"
                define(service.url, admin, model, policy(aggregation, screening))
                row[attack] = federate(service.url, admin, tokens, model, data, attack)
                print(f"   {label:18s} {attack:12s} accuracy {row[attack]['accuracy']:.3f}", flush=True)
            figures["methods"][label] = row
        for label, epsilon in PRIVACY:
            model = f"softmax:dp-{label.replace(' ', '')}"
            define(service.url, admin, model, policy({"method": "fedavg"}, True, epsilon))
            result = federate(service.url, admin, tokens, model, data, "none")
            status, shared = call(
                "GET", f"{service.url}/v1/petals/model/shared?modelType={model}", token=tokens[0]
            )
            result["privacy"] = (shared.get("metadata") or {}).get("privacy")
            figures["privacy"][label] = result
            print(f"   {label:12s} accuracy {result['accuracy']:.3f} privacy {result['privacy']}", flush=True)
    print(table(figures))
    return figures


def table(figures: dict) -> str:
    lines = [f"{'method':18s} " + " ".join(f"{a:>12s}" for a in ATTACKS)]
    for label, row in figures["methods"].items():
        lines.append(f"{label:18s} " + " ".join(f"{row[a]['accuracy']:12.3f}" for a in ATTACKS))
    lines.append("")
    for label, result in figures["privacy"].items():
        spent = (result.get("privacy") or {}).get("epsilonSpent")
        lines.append(
            f"{label:12s} accuracy {result['accuracy']:.3f}"
            + ("" if spent is None else f"  epsilon spent {spent:.3f}")
        )
    return "\n".join(lines)
