"""Settings: the TOML file an operator writes, validated at start with errors naming the key."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from portway.config_base import ConfigError, split_listen
from portway.config_base import Strict as _Strict
from portway.config_base import check_listen as _check_listen
from portway.config_base import check_networks as _check_networks
from portway.config_jobs import JobConfig, JobsConfig
from portway.config_stores import CleanupPolicyConfig, DatabaseConfig, Redirect, StorageConfig

__all__ = [
    "CleanupPolicyConfig",
    "ConfigError",
    "DatabaseConfig",
    "JobConfig",
    "JobsConfig",
    "Redirect",
    "StorageConfig",
    "split_listen",
]

REPO_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
WritePolicy = Literal["allow", "allow_once", "deny", "allow_latest"]


class ServerConfig(_Strict):
    listen: str = "0.0.0.0:8081"
    data_dir: Path = Path("./portway-data")
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    # Worker processes sharing the listeners; 0 means one per CPU (the default).
    workers: int = Field(default=0, ge=0, le=64)
    tls: TlsConfig | tuple[TlsConfig, ...] | None = None
    upload_session_ttl: int = Field(default=86400, ge=60, description="seconds")
    # Garbage collection leaves alone, for this long, what an existence answer vouched for
    # (blob HEAD, mount, upload commit, a manifest PUT's references), and waits this long
    # after something became garbage before deleting it (ADR 25).
    gc_hold: float = Field(default=3600, ge=1, le=7 * 86400, description="seconds")
    # A request body (an upload, a manifest) that sends nothing for this long is refused and
    # its upload session freed, instead of holding both until the connection dies.
    body_idle_timeout: float = Field(default=300, ge=1, le=86400, description="seconds")
    # A write waits this long for the metadata database's write lock (held by another worker,
    # a `portway` command, a backup), then answers 503 with Retry-After; reads never wait.
    database_busy_timeout: float = Field(default=5, ge=0.1, le=600, description="seconds")
    # A connection must deliver a complete request header this long after it opens (or after
    # the first byte of its next request); a kept-alive connection idle for keepalive_timeout
    # is closed.
    header_timeout: float = Field(default=30, ge=1, le=3600, description="seconds")
    keepalive_timeout: float = Field(default=75, ge=1, le=3600, description="seconds")
    # On SIGTERM a worker stops accepting and gives in-flight requests this long to finish
    # (ADR 18); the systemd unit's TimeoutStopSec must stay above it.
    drain_timeout: float = Field(default=60, ge=0, le=3600, description="seconds")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Several nodes on one host serve the same connector ports (SO_REUSEPORT: the kernel
    # spreads new connections over them). Off, a connector port another process holds is
    # refused, as the main listener always is (ADR 9, ADR 28).
    share_connector_ports: bool = False
    # Operations (README "Operations"): one access-log line per request, as text or JSON;
    # Prometheus metrics at /metrics; health checks of the database and the blob store.
    log_format: Literal["text", "json"] = "text"
    access_log: bool = True
    metrics: bool = True
    # Repositories (in configuration order) that get their own `repository` label in metrics;
    # the rest count under "_other", so 10,000 repositories stay a bounded label set.
    metrics_repository_labels: int = Field(default=100, ge=0, le=10000)
    health_check_interval: float = Field(default=5, ge=0.2, le=600, description="seconds")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_networks(value)


class TlsConfig(_Strict):
    cert: Path
    key: Path


class RepositoryConfig(_Strict):
    name: str
    type: Literal["hosted", "proxy", "group"]
    path_routing: bool = False
    write_policy: WritePolicy = "allow"
    strict_content_types: bool = False
    v1_enabled: bool = True
    anonymous_pull: bool = False
    redirect: Redirect | None = None  # blob GETs: overrides [storage] redirect
    cleanup_policies: tuple[str, ...] = ()  # names of [[cleanup_policy]] tables
    # hosted: pushes that would store more than this many bytes are refused (DENIED)
    quota_bytes: int | None = Field(default=None, ge=0)
    quota_warning: float = Field(default=0.8, gt=0, le=1)  # fraction of quota_bytes: warn
    # proxy
    remote_url: str | None = None
    remote_username: str | None = None
    remote_password: str | None = None
    metadata_max_age: int = Field(default=1440 * 60, ge=0, description="seconds")
    negative_cache_ttl: int = Field(default=1440 * 60, ge=0, description="seconds")
    cache_foreign_layers: bool = False
    foreign_layer_urls: tuple[str, ...] = ()
    # group
    members: tuple[str, ...] = ()
    writable_member: str | None = None
    allow_proxy_shadowing: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not REPO_NAME_RE.match(value):
            raise ValueError(
                "repository names are 1-64 characters of a-z, 0-9, '.', '_', '-', "
                "starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> RepositoryConfig:
        if self.type == "proxy" and not self.remote_url:
            raise ValueError(f"proxy repository {self.name!r} needs remote_url")
        if self.type != "proxy" and self.remote_url:
            raise ValueError(f"remote_url is only for proxy repositories ({self.name!r})")
        if self.type == "group":
            if not self.members:
                raise ValueError(f"group repository {self.name!r} needs members")
            if self.writable_member and self.writable_member not in self.members:
                raise ValueError(
                    f"writable_member {self.writable_member!r} is not a member of {self.name!r}"
                )
        elif self.members or self.writable_member:
            raise ValueError(
                f"members/writable_member are only for group repositories ({self.name!r})"
            )
        return self


class ConnectorConfig(_Strict):
    listen: str
    repository: str | None = None
    # "proxy": a reverse proxy in front owns this port (see `portway proxy-config`); Portway
    # itself does not open it, and the generated proxy config targets the main listener.
    served_by: Literal["portway", "proxy"] = "portway"
    tls: TlsConfig | tuple[TlsConfig, ...] | None = None
    external_url: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value)


class HostConfig(_Strict):
    name: str
    repository: str | None = None
    external_url: str | None = None

    @field_validator("name")
    @classmethod
    def _host(cls, value: str) -> str:
        value = value.lower()
        label = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
        if not re.fullmatch(rf"(\*\.)?{label}(\.{label})*", value):
            raise ValueError(f"not a host name: {value!r}")
        return value

    @model_validator(mode="after")
    def _wildcard(self) -> HostConfig:
        wildcard = self.name.startswith("*.")
        if wildcard and self.repository:
            raise ValueError(
                f"host {self.name!r}: a wildcard host names its repository by its first label; "
                "leave repository out"
            )
        if not wildcard and not self.repository:
            raise ValueError(f"host {self.name!r} needs a repository")
        return self


class SecurityConfig(_Strict):
    # Off: anyone may push and pull (as a bare CNCF distribution). On: users, roles, tokens.
    enabled: bool = True
    service: str = "portway"  # the token audience (`service` in challenges)
    token_ttl: int = Field(default=300, ge=30, le=86400, description="seconds")
    max_header_bytes: int = Field(default=16384, ge=1024, le=1048576)
    # Failed logins (counted in the database, shared by all workers): per user and address,
    # and per address whatever the user; both over a sliding window of seconds.
    login_max_failures: int = Field(default=10, ge=1, le=10000)
    login_max_failures_per_address: int = Field(default=30, ge=1, le=100000)
    login_failure_window: int = Field(default=300, ge=1, le=86400, description="seconds")
    # Password checks (argon2, ~64 MiB and a third of a second each) and login writes at once
    # per worker, off the event loop and at a lower CPU priority.
    login_threads: int = Field(default=4, ge=1, le=64)
    # `portway user add|passwd` refuse shorter passwords (characters).
    min_password_length: int = Field(default=8, ge=1, le=1024)


class Settings(_Strict):
    server: ServerConfig = ServerConfig()
    security: SecurityConfig = SecurityConfig()
    database: DatabaseConfig = DatabaseConfig()
    storage: StorageConfig = StorageConfig()
    repository: tuple[RepositoryConfig, ...] = ()
    connector: tuple[ConnectorConfig, ...] = ()
    host: tuple[HostConfig, ...] = ()
    cleanup_policy: tuple[CleanupPolicyConfig, ...] = ()
    jobs: JobsConfig = JobsConfig()
    job: tuple[JobConfig, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> Settings:
        names = [r.name for r in self.repository]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"repository names must be unique: {sorted(dupes)}")
        known = set(names)
        policies = {p.name for p in self.cleanup_policy}
        for repo in self.repository:
            for policy in repo.cleanup_policies:
                if policy not in policies:
                    raise ValueError(f"repository {repo.name!r}: unknown cleanup policy {policy!r}")
        job_names = [j.name for j in self.job]
        if len(set(job_names)) != len(job_names):
            raise ValueError(f"job names must be unique: {sorted(job_names)}")
        for job in self.job:
            if job.policy and job.policy not in policies:
                raise ValueError(f"job {job.name!r}: unknown cleanup policy {job.policy!r}")
        for repo in self.repository:
            for member in repo.members:
                if member not in known:
                    raise ValueError(f"group {repo.name!r}: unknown member {member!r}")
        kinds = {r.name: r.type for r in self.repository}
        members_of = {r.name: r.members for r in self.repository if r.type == "group"}
        for repo in self.repository:
            if repo.type != "group":
                continue
            _check_cycles(repo.name, members_of)
            if repo.writable_member and kinds.get(repo.writable_member) != "hosted":
                raise ValueError(
                    f"group {repo.name!r}: writable_member {repo.writable_member!r} must be "
                    "a hosted repository"
                )
        for conn in self.connector:
            if conn.repository and conn.repository not in known:
                raise ValueError(f"connector {conn.listen}: unknown repository {conn.repository!r}")
        for host in self.host:
            if host.repository and host.repository not in known:
                raise ValueError(f"host {host.name}: unknown repository {host.repository!r}")
        listens = [self.server.listen, *(c.listen for c in self.connector)]
        ports = [split_listen(v) for v in listens]
        clash = {p for p in ports if ports.count(p) > 1 and p[1] != 0}
        if clash:
            raise ValueError(f"two listeners on the same address: {sorted(clash)}")
        return self

    @property
    def worker_count(self) -> int:
        return self.server.workers or max(1, os.cpu_count() or 1)

    def repo(self, name: str) -> RepositoryConfig | None:
        return next((r for r in self.repository if r.name == name), None)


def _check_cycles(name: str, members_of: dict[str, tuple[str, ...]]) -> None:
    def visit(node: str, path: tuple[str, ...]) -> None:
        if node in path:
            raise ValueError(f"group cycle: {' -> '.join((*path, node))}")
        for member in members_of.get(node, ()):
            visit(member, (*path, node))

    visit(name, ())


DEFAULT_REPOSITORIES: tuple[RepositoryConfig, ...] = (
    RepositoryConfig(name="docker-hosted", type="hosted", path_routing=True),
)


def _loc(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """Render a pydantic error location as the operator wrote it: repository[2].name."""
    out = ""
    node: Any = raw
    for part in loc:
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and part < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            out += f"[{part}]" + (f"({name})" if name else "")
            node = item
        else:
            if "[" in part or part.endswith("Config"):
                continue  # pydantic's name for a union branch, e.g. tuple[TlsConfig, ...]
            out += ("." if out else "") + part
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


# Keys that were accepted once but never did anything; a file that still has one is told why
# rather than only "unknown key" (ADR 14).
REMOVED_KEYS = {
    "online": "removed: it never did anything (every configured repository serves requests); "
    "see docs/adr/0014-config-keys-that-did-nothing.md",
    "content_max_age": "removed: it never did anything (a blob or a manifest by digest never "
    "changes, so its cached copy is kept; metadata_max_age sets when a tag is re-checked); "
    "see docs/adr/0014-config-keys-that-did-nothing.md",
}


def _env_overrides(
    raw: dict[str, Any], environ: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """PORTWAY_SERVER__LISTEN=... overrides [server] listen; only the [server] table.
    Returns the merged document and, for each [server] key set from the environment, the
    variable that set it (so an error names the variable, not a file key)."""
    server = dict(raw.get("server", {}))
    sources: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("PORTWAY_SERVER__"):
            field = key.removeprefix("PORTWAY_SERVER__").lower()
            server[field] = value
            sources[field] = key
    for key, field in (("PORTWAY_DATA_DIR", "data_dir"), ("PORTWAY_LISTEN", "listen")):
        if key in environ:
            server[field] = environ[key]
            sources[field] = key
    if server:
        raw = {**raw, "server": server}
    return raw, sources


def _where(loc: tuple[int | str, ...], raw: dict[str, Any], sources: dict[str, str]) -> str:
    if len(loc) >= 2 and loc[0] == "server" and isinstance(loc[1], str) and loc[1] in sources:
        return f"environment variable {sources[loc[1]]} (sets [server] {loc[1]})"
    return _loc(loc, raw)


def parse_settings(raw: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    raw, sources = _env_overrides(raw, dict(os.environ if environ is None else environ))
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            where = _where(loc, raw, sources)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = REMOVED_KEYS.get(str(loc[-1]), "unknown key")
                if where.startswith("environment"):
                    msg = f"[server] has no key {loc[-1]!r}: check the variable's spelling"
            lines.append(f"  {where}: {msg}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    return settings


def load_settings(path: Path | None, environ: dict[str, str] | None = None) -> Settings:
    """Read the TOML file (or nothing: the embedded default) and validate it."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    settings = parse_settings(raw, environ)
    if path is None or "repository" not in raw:
        settings = settings.model_copy(update={"repository": DEFAULT_REPOSITORIES})
    base = path.parent if path is not None else Path.cwd()
    return _resolve_paths(settings, base)


def _abs(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def _tls_abs(tls: TlsConfig | tuple[TlsConfig, ...] | None, base: Path) -> Any:
    if tls is None:
        return None
    if isinstance(tls, TlsConfig):
        return TlsConfig(cert=_abs(tls.cert, base), key=_abs(tls.key, base))
    return tuple(TlsConfig(cert=_abs(t.cert, base), key=_abs(t.key, base)) for t in tls)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    """Relative paths in a config file are relative to that file's folder."""
    server = settings.server.model_copy(
        update={
            "data_dir": _abs(settings.server.data_dir, base),
            "tls": _tls_abs(settings.server.tls, base),
        }
    )
    connectors = tuple(
        c.model_copy(update={"tls": _tls_abs(c.tls, base)}) for c in settings.connector
    )
    return settings.model_copy(update={"server": server, "connector": connectors})


ServerConfig.model_rebuild()
ConnectorConfig.model_rebuild()
