"""Operations across repositories that transports share (ADR 17).

`SharedCatalog`: what a shared host lists (no host, connector or path picks one repository):
every path-routed repository's images as `<repository>/<image>`, in name order, restricted
to the repositories the caller may see, with the registry API's `last`/`n` paging. The HTTP
`_catalog` answers it today; the admin API's component listing will page the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from portway.repos.registry import RepositoryRegistry


class SharedCatalog:
    def __init__(self, registry: RepositoryRegistry[Any]) -> None:
        self.registry = registry

    async def names(
        self, visible: Callable[[str], bool], last: str | None, limit: int | None
    ) -> list[str]:
        """Up to `limit` names after `last` (a `<repository>/<image>` from the previous page)."""
        snapshot = self.registry.current  # one set of repositories for the whole page
        routed = sorted(d.name for d in snapshot.definitions if d.path_routing)
        after_repo, _, after_image = last.partition("/") if last is not None else ("", "", "")
        names: list[str] = []
        for repo_name in routed:
            if not visible(repo_name):
                continue
            if last is not None and after_repo > repo_name:
                continue
            inner_last = after_image if last is not None and after_repo == repo_name else None
            want = None if limit is None else limit - len(names)
            images = await snapshot.repos[repo_name].catalog(inner_last, want)
            names.extend(f"{repo_name}/{image}" for image in images)
            if limit is not None and len(names) >= limit:
                break
        return names
