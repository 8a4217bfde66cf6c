"""`python -m bench.shim_client`: one HTTP client of the publish shim, for the per-message shim scenarios.

* `--topics N`: one `POST /publish` of N events whose topics are all different (a real client's mixed
  load: no two events can share a message); prints its events per second.
* `--sequential N`: N single-event `POST /publish`, each sent when the previous one was answered; prints
  the nearest-rank p50 and p99 of the request times in milliseconds (the first WARMUP not counted).
* `--stored N`: N single-event `POST /publish?wait=stored` and N plain `POST /publish`, alternating on one
  connection (so both see the same moments of machine noise), each sent when the previous one was
  answered; prints p50 and p99 of each mode and the ratio of the p50s. A wait=stored answer other than
  200 with the event counted `new` fails the run: every answered event must be stored. Then the same in
  blocks (`blocks_*`): per round a block of each mode, over 3 rounds, as a client that only reads its own
  writes would send them.

The client is the standard library's `http.client` on one keep-alive connection: the least client-side
time per request in Python, so what is measured is the server's. Bodies are serialised before the clock
starts; any answer but 200 fails the run (exit 1).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from publisher import load

WARMUP = 20
HEADERS = {"content-type": "application/json"}


def events(count: int, seed: int, distinct_topics: bool) -> list[dict[str, Any]]:
    items = [item.model_dump() for item in load.generate(count, 0.0, 8, seed).events]
    if distinct_topics:
        for index, item in enumerate(items):
            item["topic"] = f"bench.topic{index}"
    return items


def post(connection: http.client.HTTPConnection, body: bytes, path: str = "/publish") -> bytes:
    connection.request("POST", path, body=body, headers=HEADERS)
    response = connection.getresponse()
    answer = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {answer[:300]!r}")
    return answer


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def many_topics(connection: http.client.HTTPConnection, count: int, seed: int) -> dict[str, Any]:
    body = json.dumps(events(count, seed, True)).encode()
    started = time.perf_counter()
    post(connection, body)
    seconds = time.perf_counter() - started
    return {"events": count, "seconds": seconds, "events_per_second": count / seconds}


def sequential(
    connection: http.client.HTTPConnection, count: int, seed: int, path: str = "/publish"
) -> dict[str, Any]:
    bodies = [json.dumps(item).encode() for item in events(count + WARMUP, seed, False)]
    timings: list[float] = []
    for index, body in enumerate(bodies):
        started = time.perf_counter()
        post(connection, body, path)
        if index >= WARMUP:
            timings.append((time.perf_counter() - started) * 1000)
    return {
        "requests": count,
        "p50_ms": percentile(timings, 50),
        "p99_ms": percentile(timings, 99),
        # One event per request, one request at a time: every event counted here was answered.
        "events_per_second": count / (sum(timings) / 1000),
    }


def stored(connection: http.client.HTTPConnection, count: int, seed: int) -> dict[str, Any]:
    # Distinct events for both modes: a wait=stored event the store already has would still answer 200,
    # but as a duplicate, which is not the case measured.
    bodies = [json.dumps(item).encode() for item in events(2 * (count + WARMUP), seed, False)]
    timings: dict[str, list[float]] = {"stored": [], "plain": []}
    for index, body in enumerate(bodies):
        mode = "stored" if index % 2 == 0 else "plain"
        started = time.perf_counter()
        answer = post(connection, body, "/publish?wait=stored" if mode == "stored" else "/publish")
        took = (time.perf_counter() - started) * 1000
        if mode == "stored" and json.loads(answer).get("new") != 1:
            raise RuntimeError(f"wait=stored answered without storing the event: {answer[:300]!r}")
        if index >= 2 * WARMUP:
            timings[mode].append(took)
    out: dict[str, Any] = {"requests": count}
    for mode, values in timings.items():
        out[f"{mode}_p50_ms"] = percentile(values, 50)
        out[f"{mode}_p99_ms"] = percentile(values, 99)
    out["p50_ratio"] = out["stored_p50_ms"] / out["plain_p50_ms"]
    out.update(stored_in_blocks(connection, count, seed + 1))
    return out


def stored_in_blocks(
    connection: http.client.HTTPConnection, count: int, seed: int, rounds: int = 3
) -> dict[str, Any]:
    """The same two modes one after the other instead of alternating: per round, a block of wait=stored
    requests and a block of plain ones (which goes first alternates by round). A wait=stored request then
    follows another wait=stored one, as for a client reading its own writes, instead of a plain publish
    whose commit may still be running when it arrives."""
    block = max(1, count // rounds)
    bodies = iter([json.dumps(item).encode() for item in events(2 * rounds * (block + WARMUP), seed, False)])
    timings: dict[str, list[float]] = {"stored": [], "plain": []}
    for round_ in range(rounds):
        for mode in ("stored", "plain") if round_ % 2 == 0 else ("plain", "stored"):
            for index in range(block + WARMUP):
                started = time.perf_counter()
                answer = post(
                    connection, next(bodies), "/publish?wait=stored" if mode == "stored" else "/publish"
                )
                took = (time.perf_counter() - started) * 1000
                if mode == "stored" and json.loads(answer).get("new") != 1:
                    raise RuntimeError(f"wait=stored answered without storing the event: {answer[:300]!r}")
                if index >= WARMUP:
                    timings[mode].append(took)
    out: dict[str, Any] = {}
    for mode, values in timings.items():
        out[f"blocks_{mode}_p50_ms"] = percentile(values, 50)
        out[f"blocks_{mode}_p99_ms"] = percentile(values, 99)
    out["blocks_p50_ratio"] = out["blocks_stored_p50_ms"] / out["blocks_plain_p50_ms"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.shim_client", description=__doc__)
    p.add_argument("--url", required=True, help="the api's base URL")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--topics", type=int, metavar="N", help="one request of N events, N topics")
    mode.add_argument("--sequential", type=int, metavar="N", help="N single-event requests, one at a time")
    mode.add_argument(
        "--stored", type=int, metavar="N", help="N wait=stored and N plain single-event requests, alternating"
    )
    p.add_argument("--wait-stored", action="store_true", help="with --sequential: POST /publish?wait=stored")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    count = next(n for n in (args.topics, args.sequential, args.stored) if n is not None)
    if count < 1:
        print("shim_client: need a count >= 1", file=sys.stderr)
        return 2
    where = urlsplit(args.url)
    connection = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=args.timeout)
    try:
        if args.topics is not None:
            result = many_topics(connection, count, args.seed)
        elif args.stored is not None:
            result = stored(connection, count, args.seed)
        else:
            path = "/publish?wait=stored" if args.wait_stored else "/publish"
            result = sequential(connection, count, args.seed, path)
    except (OSError, RuntimeError, http.client.HTTPException) as exc:
        print(f"shim_client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
