"""The load generator, run as its own process: N concurrent aiohttp clients loop over
the given URLs for a fixed time and print one JSON line of figures."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp


async def generate(urls: list[str], token: str | None, concurrency: int, duration_s: float) -> dict:
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        deadline = time.perf_counter() + duration_s

        async def worker(offset: int) -> None:
            nonlocal errors
            index = offset
            while time.perf_counter() < deadline:
                url = urls[index % len(urls)]
                index += 1
                started = time.perf_counter()
                try:
                    async with session.get(url) as response:
                        await response.read()
                        if response.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*[worker(i) for i in range(concurrency)])
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(len(ordered) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered) * 1e3, 2),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1e3, 2),
        "max_ms": round(ordered[-1] * 1e3, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--token")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(generate(args.urls, args.token, args.concurrency, args.duration))))


if __name__ == "__main__":
    main()
