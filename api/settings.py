"""The api's settings: the shared ones plus port, publish limits, confirm timeout and the optional API key."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, field_validator

from contract.config import CommonSettings

# The shapes of answers the api can give (api/compat.py); validation and guarantees are the same in all.
Profile = Literal["default", "seed003", "seed004"]
PROFILES: tuple[str, ...] = get_args(Profile)
# What a publish waits for before it answers: the broker's confirm, or the store's commit (?wait=stored).
Wait = Literal["confirmed", "stored"]
# Profiles whose clients read /stats or /events the moment their POST returns (docs/compat.md): their
# publishes wait for the store unless PUBLISH_WAIT says otherwise.
READS_AFTER_POST: frozenset[str] = frozenset({"seed003", "seed004"})


class ApiSettings(CommonSettings):
    # Loopback unless told otherwise: the default API key is none and the broker's default password is
    # public. Dockerfile.api sets 0.0.0.0, which a container needs for its published port to reach it.
    api_host: str = Field("127.0.0.1", description="address to listen on; 0.0.0.0 for every interface")
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
    # A live tail's buffer on the server (GET /events/stream): a client this far behind is disconnected.
    tail_buffer_bytes: Annotated[int, Field(ge=4096)] = 1024 * 1024
    # Which earlier aggregator's answers to imitate (README, "HTTP API"); only shapes answers.
    api_compat: Profile = "default"
    # Unset: `confirmed`, or `stored` under a profile in READS_AFTER_POST. A request's ?wait= wins.
    publish_wait: Wait | None = Field(
        None,
        description="what a plain publish waits for: confirmed (the broker) or stored (the store, as "
        "?wait=stored); unset: confirmed, or stored under API_COMPAT seed003 and seed004",
    )

    def waits_for(self, asked: Wait | None = None) -> Wait:
        """What a publish waits for: the request's ?wait=, else PUBLISH_WAIT, else the profile's default."""
        if asked is not None:
            return asked
        if self.publish_wait is not None:
            return self.publish_wait
        return "stored" if self.api_compat in READS_AFTER_POST else "confirmed"

    @field_validator("api_compat", mode="before")
    @classmethod
    def _check_profile(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in PROFILES:
            return value.strip().lower()
        raise ValueError(f"API_COMPAT must be one of {', '.join(PROFILES)}; got {value!r}")
