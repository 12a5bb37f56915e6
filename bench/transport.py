"""Which HTTP client for deliveries? The sender over each transport, alternated.

    python bench/transport.py [--n 20000] [--pairs 3]
    pip install curl_cffi   # optional: a libcurl candidate, measured when installed

Signed deliveries (`Sender.attempt`, exactly what the dispatcher calls) of the same
bodies to the bench receiver at 64 in flight, on uvloop as `feedhook run` is: over
aiohttp (the fallback), pyreqwest (the transport deliveries use) and curl_cffi's
AsyncSession when installed, all behind the same `Transport` seam, a warm-up round
first, then the transports alternated. Prints deliveries/s and this process's CPU per
delivery (every thread, the clients' own included) per round, then each one's median
rate against aiohttp's. A client is adopted only at >= 1.3x with the transport contract
suite (tests/unit/delivery/test_transport.py) passing.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from run import sample_bodies, server

from feedhook.delivery.sender import Sender
from feedhook.delivery.signing import Signer
from feedhook.delivery.transport import (
    READ_LIMIT,
    AiohttpTransport,
    ReqwestTransport,
    Response,
    Transport,
    TransportError,
    new_client,
    new_session,
)
from feedhook.process import run_async

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CONCURRENCY = 64


class CurlTransport:
    """The same seam over curl_cffi (libcurl): no redirects, a total timeout, TLS
    verified (libcurl's default), connections reused by the session."""

    def __init__(self, session: Any) -> None:
        self.session = session

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Response:
        from curl_cffi.requests.exceptions import RequestException

        try:
            r = await self.session.request(
                method,
                url,
                headers=dict(headers),
                data=body,
                timeout=timeout,
                allow_redirects=False,
            )
        except RequestException as exc:
            raise TransportError(str(exc)) from None
        return Response(r.status_code, r.headers, r.content[:READ_LIMIT])


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def deliver(sender: Sender, url: str, bodies: list[tuple[str, bytes]]) -> tuple[float, float]:
    """Deliveries/s, and CPU microseconds per delivery."""
    signer = Signer([SECRET])
    taken = 0

    async def worker() -> None:
        nonlocal taken
        while taken < len(bodies):
            msg_id, body = bodies[taken]
            taken += 1
            result = await sender.attempt(url, msg_id, body, signer, {}, 15.0)
            assert result.ok, result

    started, cpu = time.perf_counter(), cpu_seconds()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    seconds = time.perf_counter() - started
    return len(bodies) / seconds, (cpu_seconds() - cpu) / len(bodies) * 1e6


async def main_async(n: int, pairs: int) -> int:
    bodies = sample_bodies(n)
    async with server("receiver") as rx, new_session() as session, new_client() as client:
        transports: dict[str, Transport] = {
            "aiohttp": AiohttpTransport(session),
            "pyreqwest": ReqwestTransport(client),
        }
        curl: Any = None
        try:
            from curl_cffi.requests import AsyncSession

            curl = AsyncSession(max_clients=CONCURRENCY)
            transports["curl_cffi"] = CurlTransport(curl)
        except ImportError:
            print("curl_cffi is not installed: measuring aiohttp and pyreqwest")
        senders = {name: Sender(t, "feedhook/bench") for name, t in transports.items()}
        rates: dict[str, list[float]] = {name: [] for name in senders}
        cpu: dict[str, list[float]] = {name: [] for name in senders}
        try:
            for name, sender in senders.items():  # warm-up, not counted
                await deliver(sender, f"{rx.url}/{name}", bodies[: n // 4])
            for _ in range(pairs):
                for name, sender in senders.items():
                    rate, us = await deliver(sender, f"{rx.url}/{name}", bodies)
                    rates[name].append(rate)
                    cpu[name].append(us)
        finally:
            if curl is not None:
                await curl.close()
    reference = statistics.median(rates["aiohttp"])
    for name in senders:
        print(
            f"{name}: {[round(r) for r in rates[name]]} deliveries/s,"
            f" {[round(us, 1) for us in cpu[name]]} us of CPU each;"
            f" {statistics.median(rates[name]) / reference:.2f}x aiohttp (medians)"
        )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    sys.exit(run_async(main_async(args.n, args.pairs)))


if __name__ == "__main__":
    main()
