"""No round waits on numba: aggregation/warmup.py gives every kernel the signature a real
round needs, and the service runs it during start-up, before READY."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap

from tests.helpers import REPO, ServerProcess, clean_env
from tests.test_systemd import NotifyListener

FRESH = textwrap.dedent(
    """
    import json
    import numpy as np
    import aggregation
    from aggregation import warmup

    before = warmup.signatures()
    warmup.compile_kernels()
    ready = warmup.signatures()
    # A real round afterwards: another model, more clients, every method and optimizer.
    rng = np.random.default_rng(7)
    model = {"conv.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
             "head.weight": rng.normal(size=(10, 72)).astype(np.float32), "head.bias": np.zeros(10, np.float32)}
    updates = [{k: v * (i + 1) for k, v in model.items()} for i in range(9)]
    for method in aggregation.METHODS:
        aggregation.aggregate(updates, list(range(1, 10)), method, **({"f": 2} if "krum" in method else {}))
    delta = dict(aggregation.aggregate(updates, list(range(1, 10)), "fedavg", clip_norm=2.0))
    for name in aggregation.OPTIMIZERS:
        aggregation.make_optimizer(name).step(model, delta)
    print(json.dumps({"before": before, "ready": ready, "after": warmup.signatures()}))
    """
)


def test_after_the_warm_up_a_real_round_compiles_nothing():
    done = subprocess.run(
        [sys.executable, "-c", FRESH], cwd=REPO, capture_output=True, text=True, timeout=900, check=True
    )
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["before"] and not any(counts["before"].values())  # a fresh process: nothing loaded
    assert all(counts["ready"].values()), counts["ready"]
    assert counts["after"] == counts["ready"]  # the round found every signature already there


def test_the_service_compiles_the_kernels_before_ready(tmp_path):
    listener = NotifyListener(f"@wondercraft-test-{secrets.token_hex(6)}")
    server = ServerProcess(tmp_path / "state", env=clean_env(NOTIFY_SOCKET=listener.address))
    try:
        server.start(wait=False)
        ready = listener.wait_for("READY", timeout=600)
        statuses = [m["STATUS"] for _, m in listener.messages if "STATUS" in m]
        assert "compiling aggregation kernels" in statuses
        assert statuses.index("compiling aggregation kernels") < statuses.index(ready["STATUS"])
        log = server.log()
        assert "aggregation kernels ready" in log
        assert log.index("aggregation kernels ready") < log.index("listening")
    finally:
        server.stop()
        listener.close()
