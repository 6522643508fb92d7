"""Settings of the HTTP API process (`STEPPE_API_…`), next to the shared `Settings`."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


class ApiSettings(BaseSettings):
    """What only `steppe api` reads: authentication, request limits, pool sizing."""

    model_config = SettingsConfigDict(env_prefix="STEPPE_API_", extra="ignore")

    token: SecretStr | None = Field(
        default=None, description="Bearer token required on /v1 routes; unset or empty disables auth"
    )
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0, description="Largest request body")
    max_wait: float = Field(default=300.0, gt=0, description="Upper bound of `?wait=SECONDS` on submit")
    db_pool_size: int = Field(default=10, gt=0, description="PostgreSQL connections of this process")
    ready_timeout: float = Field(default=2.0, gt=0, description="Seconds each /readyz check may take")

    @field_validator("token", mode="after")
    @classmethod
    def _empty_means_unset(cls, value: SecretStr | None) -> SecretStr | None:
        # `STEPPE_API_TOKEN=` in an env file should not demand an empty bearer token.
        return value if value is not None and value.get_secret_value() else None
