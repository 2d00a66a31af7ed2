"""What the admin API's handlers call: the services of the composition root (ADR 17)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from portway.auth.services import KeyService, RoleService, UserService
from portway.db.browse import BrowseQueries
from portway.jobs.services import JobService
from portway.lifecycle.services import LifecycleService
from portway.repos.access import AccessAdmin
from portway.repos.admin import RepositoryAdmin
from portway.repos.browse import TagBrowser
from portway.repos.bulk import BulkTags


@dataclass
class AdminServices:
    users: UserService
    roles: RoleService
    keys: KeyService
    repositories: RepositoryAdmin
    access: AccessAdmin
    browse: BrowseQueries
    tags: TagBrowser
    bulk: BulkTags
    lifecycle: LifecycleService
    audit_path: Path
    audit_engine: Engine | None = None  # a cluster's audit_events (ADR 22); else the file
    jobs: JobService | None = None  # maintenance jobs (ADR 27)
    session_engine: Engine | None = None  # a cluster's UI session key (ui/session_db.py)
