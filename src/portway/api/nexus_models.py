"""Request and response bodies of Nexus's repository endpoints, for Docker repositories.

Field names, enum spellings and required fields follow Nexus Repository's own OpenAPI
document (3.x, `DockerHostedRepositoryApiRequest` and friends); fields Portway has no use for
(blob store names, cleanup policies, replication, routing rules) are accepted and ignored.
`portway` carries what Nexus has no field for, and tells who manages the repository.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel


class NexusModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class StorageAttributes(NexusModel):
    blob_store_name: str = "default"
    strict_content_type_validation: bool = True


class HostedStorageAttributes(StorageAttributes):
    write_policy: Literal["allow", "allow_once", "deny"] = Field(
        default="allow", description="allow, allow_once or deny, in any case"
    )
    latest_policy: bool | None = Field(
        default=None, description="with allow_once: the `latest` tag may still move"
    )

    @field_validator("write_policy", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class DockerAttributes(NexusModel):
    v1_enabled: bool = False
    force_basic_auth: bool = True
    http_port: int | None = Field(default=None, ge=1, le=65535)
    https_port: int | None = Field(default=None, ge=1, le=65535)
    subdomain: str | None = None


class ProxyAttributes(NexusModel):
    remote_url: str | None = None
    content_max_age: int = Field(default=1440, description="minutes (accepted, not used)")
    metadata_max_age: int = Field(default=1440, ge=0, description="minutes")


class NegativeCacheAttributes(NexusModel):
    enabled: bool = True
    time_to_live: int = Field(default=1440, ge=0, description="minutes")


class HttpClientAuthentication(NexusModel):
    type: Literal["username", "ntlm", "bearerToken"] | None = "username"
    username: str | None = None
    password: str | None = None
    preemptive: bool | None = None


class HttpClientAttributes(NexusModel):
    blocked: bool = False
    auto_block: bool = True
    authentication: HttpClientAuthentication | None = None


class DockerProxyAttributes(NexusModel):
    index_type: Literal["HUB", "REGISTRY", "CUSTOM"] | None = "REGISTRY"
    index_url: str | None = None
    cache_foreign_layers: bool = False
    foreign_layer_url_whitelist: list[str] = []


class GroupAttributes(NexusModel):
    member_names: list[str] = []
    writable_member: str | None = None


class PortwayOptions(NexusModel):
    """Portway's own fields; `managedBy` and `revision` are read-only."""

    path_routing: bool = Field(default=True, description="reachable at /<name>/<image>")
    anonymous_pull: bool = False
    managed_by: Literal["file", "api"] | None = Field(
        default=None, description="read-only: who manages the repository"
    )
    revision: int | None = Field(default=None, description="read-only: the ETag's revision")


class _Common(NexusModel):
    name: str = Field(min_length=1, max_length=200)
    online: bool = True
    docker: DockerAttributes = DockerAttributes()
    portway: PortwayOptions | None = None


class DockerHostedRequest(_Common):
    storage: HostedStorageAttributes = HostedStorageAttributes()


class DockerProxyRequest(_Common):
    storage: StorageAttributes = StorageAttributes()
    proxy: ProxyAttributes = ProxyAttributes()
    negative_cache: NegativeCacheAttributes = NegativeCacheAttributes()
    http_client: HttpClientAttributes = HttpClientAttributes()
    docker_proxy: DockerProxyAttributes = DockerProxyAttributes()


class DockerGroupRequest(_Common):
    storage: StorageAttributes = StorageAttributes()
    group: GroupAttributes = GroupAttributes()


class _Answer(NexusModel):
    format: str = "docker"
    url: str


class DockerHostedRepository(DockerHostedRequest, _Answer):
    type: Literal["hosted"] = "hosted"


class DockerProxyRepository(DockerProxyRequest, _Answer):
    type: Literal["proxy"] = "proxy"


class DockerGroupRepository(DockerGroupRequest, _Answer):
    type: Literal["group"] = "group"


class RepositorySummary(NexusModel):
    """An entry of `GET /service/rest/v1/repositories`."""

    name: str
    format: str = "docker"
    type: Literal["hosted", "proxy", "group"]
    url: str
    attributes: dict[str, object] = {}
