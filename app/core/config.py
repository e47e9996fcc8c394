"""One Settings class for every xrec program (service, training, export), read from `XREC_*` env vars."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_ID_SALT = "xrec-dev-salt-change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XREC_", env_file=".env", extra="ignore")

    # Where raw platform logs live when a mapping file does not say otherwise.
    data_root: Path = Path("../shared/data/food-kitchen")
    # Key for pseudonymising account ids; training and serving must share it.
    id_salt: SecretStr = SecretStr(DEV_ID_SALT)


@lru_cache
def get_settings() -> Settings:
    return Settings()
