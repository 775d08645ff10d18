"""The console's own settings (environment variables ``LLMFORGE_CONSOLE_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMFORGE_CONSOLE_", extra="ignore")

    ray_dashboard_url: str | None = Field(
        default=None,
        description="the Ray dashboard as users' browsers reach it (an ingress), when that is "
        "not the address the control plane uses: job links point there",
    )
    vendor: str | None = Field(
        default=None,
        description="where `npm ci` installed the console's packages (default: node_modules "
        "beside services/console; the image sets it)",
    )
