"""The README's quickstart works as printed: its `sh` blocks, taken from the README's own text
(the fenced blocks under "## Quickstart"), run in one shell from the checkout against a real
service on a fresh state dir and a loopback port, with only PORT and STATE_DIR set, as
`make run PORT=... STATE_DIR=...` would have them."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.helpers import REPO, ServerProcess, clean_env, http

HEADING = "## Quickstart"
SCRIPT_TIMEOUT_S = 400


def quickstart_blocks(readme: str) -> list[str]:
    """The ```sh blocks between the quickstart's heading and the next section."""
    start = readme.index(f"\n{HEADING}\n")
    end = readme.find("\n## ", start + 1)
    section = readme[start : end if end != -1 else len(readme)]
    return re.findall(r"^```sh\n(.*?)^```$", section, flags=re.S | re.M)


def test_the_quickstart_has_curl_and_ctl_blocks_for_every_step():
    blocks = quickstart_blocks((REPO / "README.md").read_text())
    text = "\n".join(blocks)
    assert len(blocks) >= 3
    for step in ("/v1/agents", "/v1/petals/models", "/v1/petals/train", "/v1/petals/status/",
                 "/v1/petals/model/shared/predict", "agents add", "models create", "train ", "--watch",
                 "models predict"):  # fmt: skip
        assert step in text, step


def test_make_run_port_is_documented_and_honoured_by_the_makefile():
    readme = (REPO / "README.md").read_text()
    assert "make run PORT=3100" in readme
    makefile = (REPO / "Makefile").read_text()
    assert "PORT ?= 3000" in makefile and "--port $(PORT)" in makefile


@pytest.fixture
def service(tmp_path):
    # No admin token in the environment: the service writes STATE/admin.token, as `make run` does.
    with ServerProcess(tmp_path / "state", env=clean_env()) as server:
        yield server


def test_the_quickstart_runs_as_printed_against_a_fresh_service(service, tmp_path):
    blocks = quickstart_blocks((REPO / "README.md").read_text())
    script = "set -euo pipefail\n" + "\n".join(blocks)
    env = {k: v for k, v in clean_env().items() if not k.startswith("WONDERCRAFT_")}
    env.update(PORT=str(service.port), STATE_DIR=str(service.state_dir), TMPDIR=str(tmp_path))
    result = subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S
    )
    out = result.stdout
    assert result.returncode == 0, (out, result.stderr, service.log()[-3000:])

    # curl: the cycle was watched to its end and the committed version predicted.
    statuses = re.findall(r"^cycle cy-[0-9a-f]+: (\w+)$", out, flags=re.M)
    assert statuses[-1] == "aggregated", out
    predicted = [json.loads(line) for line in out.splitlines() if line.startswith('{"modelType":"linear')]
    assert predicted and predicted[-1]["version"] == 1 and len(predicted[-1]["outputs"]) == 2

    # wondercraft-ctl: the same, for the classifier.
    assert re.search(r"^aggregated: loss [-0-9.e]+, accuracy [-0-9.e]+, round committed, model version 1$",
                     out, flags=re.M), out  # fmt: skip
    assert re.search(r"^\*1\s+0\s", out, flags=re.M), out  # model ls: version 1 is current
    rows = re.findall(r"^([01])\s+([-0-9.e]+) ([-0-9.e]+)$", out, flags=re.M)
    assert [r[0] for r in rows] == ["0", "1"], out  # two rows of two class probabilities

    # What the service holds is what the commands made.
    token = (service.state_dir / "admin.token").read_text().strip()
    _, agents, _ = http("GET", f"{service.url}/v1/agents", token=token)
    assert {a["agentId"] for a in agents["agents"]} == {"alice", "bob"}
    for model in ("linear:quickstart", "mlp:quickstart"):
        _, versions, _ = http("GET", f"{service.url}/v1/petals/model/versions?modelType={model}", token=token)
        assert versions["currentVersion"] == 1, versions
