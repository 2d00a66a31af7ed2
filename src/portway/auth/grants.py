"""`Grant`: what a request may do on its route's repository, the one check handlers make."""

from __future__ import annotations

from dataclasses import dataclass

from portway.auth.privileges import PORTWAY_TO_DOCKER
from portway.auth.tokens import Access


@dataclass(frozen=True)
class Grant:
    """What a request may do on its route's repository.

    `actions`: Portway actions on `repository`. `access`: for a token, the images (and the
    catalog) it names; None for Basic, which is not limited to images.
    """

    principal: str
    anonymous: bool
    repository: str | None
    actions: frozenset[str]
    access: tuple[Access, ...] | None = None

    def permits(self, action: str, image: str | None = None) -> bool:
        """May the request perform `action` (browse/read/add/edit/delete) on `image`?

        For a token, `image` must be named in its access claim exactly as the client wrote it
        in the scope (on a repository-path route that includes the `<repo>/` prefix).
        """
        if action not in self.actions:
            return False
        if self.access is None or image is None:
            return True
        carriers = PORTWAY_TO_DOCKER.get(action, frozenset())
        return any(
            a.type == "repository" and a.name == image and not carriers.isdisjoint(a.actions)
            for a in self.access
        )

    @property
    def catalog(self) -> bool:
        """May this request list the catalog (filtered by `AuthService.catalog`)?"""
        if self.access is None:
            return True
        return any(a.type == "registry" and a.name == "catalog" for a in self.access)
