"""Is there a faster HTTP client for deliveries? The sender over each transport, alternated.

    pip install curl_cffi   # the candidate: libcurl, in a well-kept wheel
    python bench/transport.py [--n 20000] [--pairs 3]

Signed deliveries (`Sender.attempt`, exactly what the dispatcher calls) of the same
bodies to the bench receiver at 64 in flight: over aiohttp (feedhook's transport) and
over curl_cffi's AsyncSession behind the same `Transport` seam, a warm-up pair first,
then aiohttp and curl alternated. Prints deliveries/s per run, the medians and their
ratio; a candidate is adopted only at >= 1.3x with the transport contract suite passing.
"""

from __future__ import annotations

import argparse
import asyncio
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
    Response,
    TransportError,
    new_session,
)

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


async def deliver(sender: Sender, url: str, bodies: list[tuple[str, bytes]]) -> float:
    signer = Signer([SECRET])
    taken = 0

    async def worker() -> None:
        nonlocal taken
        while taken < len(bodies):
            msg_id, body = bodies[taken]
            taken += 1
            result = await sender.attempt(url, msg_id, body, signer, {}, 15.0)
            assert result.ok, result

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return len(bodies) / (time.perf_counter() - started)


async def main_async(n: int, pairs: int) -> None:
    from curl_cffi.requests import AsyncSession

    bodies = sample_bodies(n)
    rates: dict[str, list[float]] = {"aiohttp": [], "curl": []}
    async with server("receiver") as rx, new_session() as session:
        curl_session = AsyncSession(max_clients=CONCURRENCY)
        senders = {
            "aiohttp": Sender(AiohttpTransport(session), "feedhook/bench"),
            "curl": Sender(CurlTransport(curl_session), "feedhook/bench"),
        }
        try:
            for name, sender in senders.items():  # warm-up, not counted
                await deliver(sender, f"{rx.url}/{name}", bodies[: n // 4])
            for _ in range(pairs):
                for name, sender in senders.items():
                    rates[name].append(await deliver(sender, f"{rx.url}/{name}", bodies))
        finally:
            await curl_session.close()
    for name, measured in rates.items():
        print(f"{name}: {[round(r) for r in measured]} deliveries/s")
    ratio = statistics.median(rates["curl"]) / statistics.median(rates["aiohttp"])
    print(f"curl / aiohttp (medians): {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main_async(args.n, args.pairs))


if __name__ == "__main__":
    main()
