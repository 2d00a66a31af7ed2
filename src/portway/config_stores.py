"""Settings tables for where Portway keeps things: [database], [storage], [[cleanup_policy]]."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from portway.config_base import Strict as _Strict
from portway.config_base import check_networks as _check_networks

Redirect = Literal["off", "always", "auto"]


class DatabaseConfig(_Strict):
    # Empty: the embedded SQLite file <data_dir>/portway.db. A cluster: postgresql://USER@HOST:PORT/DB
    # (password from PGPASSWORD or ~/.pgpass, never in this file).
    url: str = ""
    pool_size: int = Field(default=10, ge=1, le=200)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("sqlite:///", "postgresql://", "postgresql+")):
            raise ValueError(f"expected sqlite:///PATH or postgresql://..., got {value!r}")
        return value


class StorageConfig(_Strict):
    # Where blobs live: "filesystem" (<data_dir>/storage, or `path`) or "s3" (a bucket;
    # credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment).
    type: Literal["filesystem", "s3"] = "filesystem"
    path: Path | None = None
    bucket: str = ""
    endpoint: str = ""  # e.g. http://rgw.example.com:7480; empty: AWS
    region: str = "us-east-1"
    prefix: str = ""  # keys under this prefix in the bucket
    # Blob GETs answered by a presigned redirect to the bucket: off, always, or auto (only
    # for clients in redirect_networks). A repository may override it. HEAD never redirects.
    redirect: Redirect = "off"
    redirect_networks: tuple[str, ...] = ()
    redirect_expiry: int = Field(default=1200, ge=10, le=604800, description="seconds")
    public_endpoint: str = ""  # the endpoint clients reach, used to sign redirects
    part_size: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024, le=5 * 1024**3)
    temp_dir: Path | None = None  # a proxy's spool and lock files on S3 (default <data_dir>/tmp)

    @field_validator("redirect_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_networks(value)

    @model_validator(mode="after")
    def _s3_fields(self) -> StorageConfig:
        if self.type == "s3" and not self.bucket:
            raise ValueError("[storage] type = \"s3\" needs bucket")
        if self.type == "filesystem" and self.redirect != "off":
            raise ValueError(
                "[storage] redirect needs type = \"s3\" (a filesystem cannot sign URLs)"
            )
        return self


class CleanupPolicyConfig(_Strict):
    """`[[cleanup_policy]]`: which tags and images a repository's cleanup removes (README
    "Cleanup policies"). Criteria that are set must all hold for a tag to go."""

    name: str
    images: str = ""  # regular expression an image name must match (search); "" for all
    include: str = ""  # regular expression a tag must match to be considered; "" for all
    exclude: str = ""  # tags matching this are never removed by this policy
    protected: tuple[str, ...] = ()  # tag names (or regular expressions) no policy removes
    keep_last: int | None = Field(default=None, ge=0)  # keep the N newest tags of each image
    order: Literal["time", "semver"] = "time"  # what "newest" means for keep_last
    older_than_days: float | None = Field(default=None, ge=0)  # tag set more than D days ago
    not_pulled_days: float | None = Field(default=None, ge=0)  # image not pulled for D days
    untagged_days: float | None = Field(default=None, ge=0)  # manifests without a tag, D days
    cache_expiry_days: float | None = Field(default=None, ge=0)  # proxy: cached, unused D days

    @field_validator("images", "include", "exclude")
    @classmethod
    def _regex(cls, value: str) -> str:
        re.compile(value)
        return value

    @field_validator("protected")
    @classmethod
    def _regexes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            re.compile(item)
        return value
