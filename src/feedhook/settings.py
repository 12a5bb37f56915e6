"""The FEEDHOOK_* environment, read once at start."""

from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feedhook.config.values import Duration


class Settings(BaseSettings):
    """Process-level settings; everything about feeds and subscribers lives in the YAML."""

    model_config = SettingsConfigDict(env_prefix="FEEDHOOK_", frozen=True, extra="ignore")

    config: str = "hooks.yaml"
    db: str = "feedhook.db"
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=8080, ge=0, le=65535)
    admin_token: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    # The pollers in a process of their own (`feedhook run`): ingest and delivery each get
    # a core. false: everything in one process (a one-core container).
    ingest_process: bool = True
    # The worker's threads (event loop, database, HTTP client) held on one CPU, which
    # they take turns on anyway (placement.py). false: the system places them.
    pin_worker: bool = True
    # How long a claim (and a source) stays a worker's without renewal: with several
    # replicas, how soon the others take over the work of one that died.
    lease: Duration = Field(default=30.0, ge=1.0, le=600.0)
    # Who feedhook is to receivers that ask (`handshake: cloudevents`): a DNS name they
    # allow. Default: this machine's fully qualified name.
    origin: str | None = None

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        return (
            value.upper()
            if value.lower() in ("debug", "info", "warning", "error")
            else value.lower()
        )


class SettingsError(Exception):
    """The FEEDHOOK_* environment cannot be used; `errors` holds one line per variable."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


_EXPECTED = {
    "admin_port": "a TCP port from 1 to 65535 (0: any free port)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "auto, json or text",
    "ingest_process": "true or false",
    "pin_worker": "true or false",
    "lease": "a duration from 1s to 10m, e.g. 30s",
}


def load_settings() -> Settings:
    """The environment as Settings, or SettingsError with a line a person can act on per
    bad variable: `FEEDHOOK_ADMIN_PORT=99999: expected a TCP port from 1 to 65535`."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            expected = _EXPECTED.get(field, str(error["msg"]).lower())
            lines.append(
                f"FEEDHOOK_{field.upper()}={error.get('input')!s}: expected {expected};"
                f" fix or unset FEEDHOOK_{field.upper()}"
            )
        raise SettingsError(lines) from None
