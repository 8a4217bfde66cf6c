"""The publisher's settings: the shared ones plus envelope size, linger and confirm handling."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from broker.publisher import DEFAULT_LINGER, PublishOptions
from contract.config import CommonSettings


class PublisherSettings(CommonSettings):
    envelope_size: Annotated[
        int, Field(ge=1, le=10_000, description="events per message (--envelope-size)")
    ] = 100
    linger: Annotated[
        float, Field(ge=0, le=60, description="seconds an envelope waits to fill (--linger)")
    ] = DEFAULT_LINGER
    max_in_flight: Annotated[
        int, Field(ge=1, le=10_000, description="unconfirmed messages at once (--max-in-flight)")
    ] = 256
    confirm_timeout: Annotated[
        float, Field(gt=0, description="seconds to wait for a confirm before re-sending (--confirm-timeout)")
    ] = 5.0
    max_attempts: Annotated[int, Field(ge=1, le=100, description="sends of one message before giving up")] = 5
    reconnect_interval: Annotated[float, Field(gt=0)] = 2.0
    keep_order: bool = Field(
        False, description="envelopes of consecutive events of one topic, sent in order (--keep-order)"
    )
    api_url: str = Field(
        "http://localhost:8080", description="the api, for --via http, --verify, dead-letters"
    )
    api_key: str | None = Field(None, description="sent as X-API-Key when the api needs one")
    # --via http: each request answers only once its events are stored (POST /publish?wait=stored).
    wait_stored: bool = Field(False, description="with --via http: wait until stored (--wait-stored)")

    def publish_options(self) -> PublishOptions:
        return PublishOptions(
            envelope_size=self.envelope_size,
            linger=self.linger,
            max_in_flight=self.max_in_flight,
            confirm_timeout=self.confirm_timeout,
            max_attempts=self.max_attempts,
            keep_order=self.keep_order,
        )
