"""Run every benchmark part (or the ones named) and write bench/results/<part>.json."""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

PARTS = ["aggregation", "runtime", "warmpool", "petals", "torch_cycle", "load"]
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> int:
    wanted = argv or PARTS
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        print(f"unknown bench part(s): {', '.join(unknown)}; known: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    for part in wanted:
        try:
            module = importlib.import_module(f"bench.{part}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{part}":
                print(f"== {part}: not built yet, skipped")
                continue
            raise
        print(f"== {part}")
        started = time.time()
        figures = module.run()
        figures["_wall_s"] = round(time.time() - started, 1)
        (RESULTS / f"{part}.json").write_text(json.dumps(figures, indent=2, sort_keys=True))
        print(f"   figures written to {RESULTS / (part + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
