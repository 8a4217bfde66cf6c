"""The api's settings: the shared ones plus port, publish limits, confirm timeout and the optional API key."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from contract.config import CommonSettings


class ApiSettings(CommonSettings):
    api_host: str = "0.0.0.0"  # in a container the service listens on all interfaces
    api_port: Annotated[int, Field(ge=1, le=65_535)] = 8080
    # Publish shim.
    publish_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    max_events_per_request: Annotated[int, Field(ge=1)] = 10_000
    max_body_bytes: Annotated[int, Field(ge=1)] = 32 * 1024 * 1024
    envelope_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    # When set, POST /publish needs it as `X-API-Key` (or `Authorization: Bearer`); reads if API_KEY_READS.
    api_key: str | None = None
    api_key_reads: bool = False
    # How long a broker reading (queue depth, reachability) is reused, so /stats stays cheap under load.
    broker_probe_ttl: Annotated[float, Field(ge=0)] = 1.0
    reconnect_interval: Annotated[float, Field(gt=0)] = 2.0
    # /health reports the consumer as stalled when messages wait and it has not committed for this long.
    consumer_stall_seconds: Annotated[float, Field(gt=0)] = 30.0
