"""The publisher's settings: the shared ones plus envelope size, linger and confirm handling."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from contract.config import CommonSettings
from contract.publishing import DEFAULT_LINGER, PublishOptions


class PublisherSettings(CommonSettings):
    envelope_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    linger: Annotated[float, Field(ge=0, le=60)] = DEFAULT_LINGER
    max_in_flight: Annotated[int, Field(ge=1, le=10_000)] = 256
    confirm_timeout: Annotated[float, Field(gt=0)] = 5.0
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    reconnect_interval: Annotated[float, Field(gt=0)] = 2.0
    api_url: str = "http://localhost:8080"
    api_key: str | None = None
    # --via http: each request answers only once its events are stored (POST /publish?wait=stored).
    wait_stored: bool = False

    def publish_options(self) -> PublishOptions:
        return PublishOptions(
            envelope_size=self.envelope_size,
            linger=self.linger,
            max_in_flight=self.max_in_flight,
            confirm_timeout=self.confirm_timeout,
            max_attempts=self.max_attempts,
        )
