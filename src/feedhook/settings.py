"""The FEEDHOOK_* environment, read once at start."""

from typing import Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process-level settings; everything about feeds and subscribers lives in the YAML."""

    model_config = SettingsConfigDict(env_prefix="FEEDHOOK_", frozen=True, extra="ignore")

    config: str = "hooks.yaml"
    db: str = "feedhook.db"
    admin_host: str = "127.0.0.1"
    admin_port: int = 8080
    admin_token: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    # The pollers in a process of their own (`feedhook run`): ingest and delivery each get
    # a core. false: everything in one process (a one-core container).
    ingest_process: bool = True

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
