"""The console's own settings (environment variables ``LLMFORGE_CONSOLE_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMFORGE_CONSOLE_", extra="ignore")

    vendor: str | None = Field(
        default=None,
        description="where `npm ci` installed the console's packages (default: node_modules "
        "beside services/console; the image sets it)",
    )
