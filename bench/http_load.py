"""`python -m bench.http_load`: the HTTP load for the baseline and the publish shim.

Sends the same generated load as the publisher CLI (`publisher.load`, same seed, 20% re-sent) as
`POST /publish` requests of `--per-request` events, `--concurrency` at a time, each re-sent on a 503 or a lost
connection. Bodies are serialised before the clock starts. Prints one JSON line with wall-clock times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import httpx

from publisher import load

ATTEMPTS = 5


async def send(url: str, bodies: list[bytes], concurrency: int, timeout: float) -> dict[str, object]:
    pending = iter(range(len(bodies)))
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            for index in pending:
                for attempt in range(1, ATTEMPTS + 1):
                    try:
                        response = await client.post("/publish", content=bodies[index], headers=headers)
                    except httpx.TransportError as exc:
                        reason = f"{type(exc).__name__}: {exc}"
                    else:
                        if response.status_code == 200:
                            break
                        reason = f"HTTP {response.status_code}: {response.text[:200]}"
                    if attempt == ATTEMPTS:
                        errors.append(reason)
                        return
                    await asyncio.sleep(0.1 * attempt)

        first = time.time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        last = time.time()
    return {"first_publish_at": first, "last_confirm_at": last, "requests": len(bodies), "errors": errors}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.http_load", description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--duplicates", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--per-request", type=int, default=1, help="events per request; 1 sends one event object")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    events = load.generate(args.count, args.duplicates, 8, args.seed).events
    if args.per_request == 1:
        bodies = [item.model_dump_json().encode() for item in events]
    else:
        bodies = [
            (
                "[" + ",".join(item.model_dump_json() for item in events[i : i + args.per_request]) + "]"
            ).encode()
            for i in range(0, len(events), args.per_request)
        ]
    result = asyncio.run(send(args.url, bodies, args.concurrency, args.timeout))
    print(json.dumps(result), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
