"""`feedhook send-test`: one signed test event, to check a receiver end to end."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from feedhook import __version__, logs
from feedhook.config import SubscriptionConfig, redact_url
from feedhook.delivery.dispatcher import Lane
from feedhook.delivery.sender import Sender
from feedhook.delivery.transport import open_transport
from feedhook.envelope import make_envelope


async def send_test(name: str, config: SubscriptionConfig) -> int:
    upstream_id = uuid.uuid4().hex
    envelope = make_envelope(
        source_name="feedhook-test",
        upstream_id=upstream_id,
        source="feedhook:send-test",
        type="feedhook.test.sent",
        time=datetime.now(UTC),
        data={"system": "feedhook", "message": f"test delivery to subscription {name}"},
    )
    lane = Lane.build(name, config)
    async with open_transport() as transport:
        result = await Sender(transport, f"feedhook/{__version__}").attempt(
            config.url, envelope.id, envelope.body, lane.signer, config.headers, config.timeout
        )
    where = redact_url(config.url, query=True)
    if result.ok:
        print(f"{name}: {where} answered HTTP {result.status} in {result.duration * 1000:.0f} ms")
        print(f"  webhook-id {envelope.id}, {'signed' if lane.signer else 'unsigned'}")
        return 0
    print(logs.redact(f"{name}: {where} failed: {result.describe()}"))
    if result.body:
        print(f"  response: {logs.redact(result.body[:300])}")
    return 1
