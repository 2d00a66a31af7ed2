"""Hosted repository: images pushed here and stored here."""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from portway.config import RepositoryConfig
from portway.db.store import MetadataStore, NewManifest, TagGuard
from portway.lifecycle.guard import Guard
from portway.lifecycle.usage import check_quota
from portway.oci import mediatypes as mt
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.oci.manifest import parse_manifest
from portway.oci.names import check_tag, lookup_reference
from portway.repos.base import BlobBody, Manifest, Repository
from portway.repos.search import matches, page_of, result
from portway.storage.blobstore import BlobStore


@dataclass(frozen=True, slots=True)
class UploadState:
    id: str
    image: str
    offset: int


class HostedRepository:
    kind = "hosted"

    def __init__(
        self,
        config: RepositoryConfig,
        repo_id: int,
        meta: MetadataStore,
        blobs: BlobStore,
        guard: Guard | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.repo_id = repo_id
        self.meta = meta
        self.blobs = blobs
        self.guard = guard or Guard(meta)  # garbage collection's view of this repository

    mount_sources: tuple[Repository, ...] = ()

    def writable(self) -> HostedRepository:
        return self

    def with_mount_sources(self, sources: Sequence[Repository]) -> HostedRepository:
        """This repository, seen through a group: a manifest pushed here may use blobs that
        other members of the group already hold (they are linked, not uploaded again)."""
        view = copy.copy(self)
        view.mount_sources = tuple(s for s in sources if s is not self)
        return view

    async def _adopt(self, image: str, missing: list[str]) -> list[str]:
        still: list[str] = []
        for text in missing:
            digest = Digest.parse(text)
            for source in self.mount_sources:
                if await source.has_blob(image, digest) and await self.link_existing(image, digest):
                    break
            else:
                still.append(text)
        return still

    # -- reads -------------------------------------------------------------------------
    async def get_manifest(self, image: str, reference: str, accept: Sequence[str]) -> Manifest:
        found = await self.meta.manifest(self.repo_id, image, lookup_reference(reference))
        if found is None:
            raise RegistryError(
                "MANIFEST_UNKNOWN", f"manifest {reference!r} not found in {image!r}"
            )
        self.guard.pulled(self.repo_id, image, found.digest)  # batched: cleanup policies
        return found

    async def holds_image(self, image: str) -> bool:
        return await self.meta.image_exists(self.repo_id, image)

    async def has_blob(self, image: str, digest: Digest) -> bool:
        size = await self.meta.blob_size(self.repo_id, image, str(digest))
        return size is not None and await self.blobs.intact(digest, size)

    async def serves_blob(self, image: str, digest: Digest) -> bool:
        return await self.has_blob(image, digest)

    async def stat_blob(self, image: str, digest: Digest) -> int:
        await self.guard.hold(self.repo_id, image, [str(digest)])  # a push may rely on it
        return await self._stat_blob(image, digest)

    async def _stat_blob(self, image: str, digest: Digest) -> int:
        size = await self.meta.blob_size(self.repo_id, image, str(digest))
        # A missing or cut file answers as a missing blob, so a client pushes it again.
        if size is None or not await self.blobs.intact(digest, size):
            raise RegistryError("BLOB_UNKNOWN", f"blob {digest} not found in {image!r}")
        return size

    async def open_blob(self, image: str, digest: Digest) -> BlobBody:
        return self.blobs.body(digest, await self._stat_blob(image, digest))

    async def list_tags(self, image: str, last: str | None, n: int | None) -> list[str]:
        if not await self.meta.image_exists(self.repo_id, image):
            raise RegistryError("NAME_UNKNOWN", f"image {image!r} not found")
        return await self.meta.list_tags(self.repo_id, image, last, n)

    async def catalog(self, last: str | None, n: int | None) -> list[str]:
        return await self.meta.list_images(self.repo_id, last, n)

    async def search(self, query: str, n: int, page: int) -> dict[str, Any] | None:
        described = await self.meta.image_descriptions(self.repo_id)
        found = [
            result(image, described.get(image, ""))
            for image in await self.meta.list_images(self.repo_id, None, None)
            if matches(query, image) or (image in described and matches(query, described[image]))
        ]
        return page_of(query, found, n, page)

    async def referrers(
        self, image: str, digest: Digest, artifact_type: str | None
    ) -> list[dict[str, Any]]:
        return await referrer_entries(self.meta, self.repo_id, image, digest, artifact_type)

    # -- deployment policy -------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.config.write_policy == "deny":
            raise RegistryError(
                "DENIED", f"repository {self.name!r} is read-only (write_policy = deny)"
            )

    def _tag_guard(
        self, new_digest: str | None, edit_refusal: RegistryError | None = None
    ) -> TagGuard:
        """The check run inside the transaction that moves a tag, on the digest the tag
        points at in that transaction: the write policy, then the caller's `edit`."""
        policy = self.config.write_policy

        def guard(tag: str, current: str | None) -> None:
            if current is None or current == new_digest:
                return
            if policy == "allow_once" or (policy == "allow_latest" and tag != "latest"):
                raise RegistryError(
                    "DENIED",
                    f"tag {tag!r} already exists in repository {self.name!r} and its "
                    f"write policy ({policy}) does not allow redeploying it",
                )
            if edit_refusal is not None:
                raise edit_refusal

        return guard

    # -- manifests ---------------------------------------------------------------------
    async def put_manifest(
        self,
        image: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        extra_tags: Sequence[str] = (),
        edit_refusal: RegistryError | None = None,
    ) -> tuple[str, str | None]:
        """Store a manifest; returns (digest, subject digest or None).

        `edit_refusal` is what to answer when the push would point an existing tag at another
        manifest (the caller lacks `edit`); None when the caller may. Whether a tag moves is
        decided in the transaction that moves it, so concurrent pushes of one new tag cannot
        both pass as "new"."""
        self._check_writable()
        parsed = parse_manifest(body, content_type, strict=self.config.strict_content_types)
        tag_names = [check_tag(t) for t in extra_tags]
        if Digest.is_digest(reference):
            wanted = Digest.parse(reference)
            digest = Digest.of(body, wanted.algorithm)
            if digest != wanted:
                raise RegistryError(
                    "DIGEST_INVALID",
                    f"manifest body has digest {digest}, not {wanted}",
                )
        else:
            tag_names.insert(0, check_tag(reference))
            digest = Digest.of(body)
        await self.guard.hold(self.repo_id, image, [str(digest), *_ref_digests(parsed)])
        missing = await self.meta.missing_blobs(
            self.repo_id, image, [str(d.digest) for d in parsed.blobs]
        )
        # an empty config (artifacts) need not have been pushed as a blob
        missing = [d for d in missing if not _is_empty_descriptor(d, parsed.blobs)]
        if missing and self.mount_sources:
            missing = await self._adopt(image, missing)
        missing += await self.meta.missing_manifests(
            self.repo_id, image, [str(d.digest) for d in parsed.children]
        )
        if missing:
            raise RegistryError(
                "MANIFEST_BLOB_UNKNOWN",
                f"manifest references {len(missing)} blob(s) or manifest(s) not in "
                f"{image!r}: {', '.join(missing[:5])}",
                detail={"missing": missing[:50]},
            )
        refs = [(str(d.digest), False) for d in parsed.blobs] + [
            (str(d.digest), True) for d in parsed.children
        ]
        subject = str(parsed.subject.digest) if parsed.subject else None
        await self.meta.put_manifest(
            self.repo_id,
            image,
            NewManifest(
                digest=str(digest),
                media_type=parsed.media_type,
                body=body,
                artifact_type=parsed.artifact_type,
                subject=subject,
                annotations=parsed.annotations,
                refs=refs,
            ),
            tag_names,
            self._tag_guard(str(digest), edit_refusal),
        )
        return str(digest), subject

    async def delete_manifest(self, image: str, reference: str) -> None:
        self._check_writable()
        reference = lookup_reference(reference)
        if Digest.is_digest(reference):
            await self.guard.removing_manifest(self.repo_id, image, reference)
            if not await self.meta.delete_manifest(self.repo_id, image, reference):
                raise RegistryError("MANIFEST_UNKNOWN", f"manifest {reference} not found")
            return
        tag = reference
        await self.guard.removing_tag(self.repo_id, image, tag)
        if not await self.meta.delete_tag(self.repo_id, image, tag, self._tag_guard(None)):
            raise RegistryError("MANIFEST_UNKNOWN", f"tag {tag!r} not found in {image!r}")

    # -- blobs and uploads -------------------------------------------------------------
    async def delete_blob(self, image: str, digest: Digest) -> None:
        self._check_writable()
        if not await self.meta.unlink_blob(self.repo_id, image, str(digest)):
            raise RegistryError("BLOB_UNKNOWN", f"blob {digest} not found in {image!r}")
        await self.guard.removed_link(self.repo_id, image, str(digest))

    async def link_existing(self, image: str, digest: Digest) -> bool:
        """Link a blob the store already holds (mount, or a re-push) into this image."""
        self._check_writable()
        await self.guard.claim(self.repo_id, image, str(digest))
        size = await self.blobs.stat(digest)
        if size is None:
            return False
        await check_quota(self.meta, self.config, self.repo_id, str(digest), size)
        await self.meta.link_blob(self.repo_id, image, str(digest), size)
        return True

    async def push_blob(
        self, image: str, chunks: AsyncIterator[bytes], digest: Digest, length: int | None
    ) -> int:
        """A monolithic upload: no session to record, one commit for the link."""
        self._check_writable()
        if length is not None:
            await check_quota(self.meta, self.config, self.repo_id, str(digest), length)
        await self.guard.claim(self.repo_id, image, str(digest))
        size = await self.blobs.ingest(chunks, digest, length)
        await check_quota(self.meta, self.config, self.repo_id, str(digest), size)
        await self.meta.link_blob(self.repo_id, image, str(digest), size)
        return size

    async def start_upload(self, image: str) -> UploadState:
        self._check_writable()
        upload_id = await self.blobs.new_upload()
        await self.meta.create_upload(upload_id, self.repo_id, image)
        return UploadState(upload_id, image, 0)

    async def upload_state(self, image: str, upload_id: str) -> UploadState:
        row = await self.meta.get_upload(upload_id) if _looks_like_uuid(upload_id) else None
        if row is None or row.repo_id != self.repo_id or row.image != image:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", f"upload {upload_id[:64]!r} not found")
        size = await self.blobs.upload_size(upload_id)
        if size is None:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", f"upload {upload_id!r} has no data")
        return UploadState(upload_id, image, size)

    async def append_upload(
        self,
        state: UploadState,
        chunks: AsyncIterator[bytes],
        expected_length: int | None,
        expected_offset: int | None = None,
    ) -> UploadState:
        # Every step of a session, not only its opening: the policy may have changed since.
        self._check_writable()
        size = await self.blobs.append(
            state.id, chunks, expected_length=expected_length, expected_offset=expected_offset
        )
        # No database write per chunk: the data file's mtime says when the session was used.
        return UploadState(state.id, state.image, size)

    async def finish_upload(self, state: UploadState, digest: Digest) -> int:
        self._check_writable()
        try:
            await check_quota(self.meta, self.config, self.repo_id, str(digest), state.offset)
        except RegistryError:
            await self.cancel_upload(state)  # refused whole: nothing stored, nothing counted
            raise
        await self.guard.claim(self.repo_id, state.image, str(digest))
        try:
            size = await self.blobs.commit(state.id, digest)
        except RegistryError as exc:
            if exc.code in ("DIGEST_INVALID", "SIZE_INVALID"):
                await self.cancel_upload(state)
            raise
        await self.meta.finish_upload(state.id, self.repo_id, state.image, str(digest), size)
        return size

    async def cancel_upload(self, state: UploadState) -> None:
        await self.blobs.abort(state.id)
        await self.meta.delete_upload(state.id)

    async def purge_uploads(self, max_age: float) -> int:
        """Drop this repository's sessions whose data was last written more than `max_age`
        seconds ago."""
        cutoff = time.time() - max_age
        purged = 0
        for upload_id in await self.meta.expired_uploads(cutoff, self.repo_id):
            used = await self.blobs.upload_mtime(upload_id)
            if used is not None and used >= cutoff:
                continue
            await self.blobs.abort(upload_id)
            await self.meta.delete_upload(upload_id)
            purged += 1
        return purged


async def referrer_entries(
    meta: MetadataStore, repo_id: int, image: str, digest: Digest, artifact_type: str | None
) -> list[dict[str, Any]]:
    """Descriptors of the manifests whose subject is `digest`, optionally filtered."""
    out: list[dict[str, Any]] = []
    for row in await meta.referrers(repo_id, image, str(digest)):
        if artifact_type is not None and row.artifact_type != artifact_type:
            continue
        entry: dict[str, Any] = {
            "mediaType": row.media_type,
            "digest": row.digest,
            "size": row.size,
        }
        if row.artifact_type:
            entry["artifactType"] = row.artifact_type
        if row.annotations:
            entry["annotations"] = row.annotations
        out.append(entry)
    return out


def _ref_digests(parsed: Any) -> list[str]:
    return [str(d.digest) for d in (*parsed.blobs, *parsed.children)]


def _looks_like_uuid(value: str) -> bool:
    return len(value) == 36 and all(c in "0123456789abcdef-" for c in value)


def _is_empty_descriptor(digest: str, blobs: Sequence[Any]) -> bool:
    # sha256 of "{}", the OCI empty descriptor's content
    empty = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    return digest == empty and any(
        str(b.digest) == empty and b.media_type == mt.OCI_EMPTY for b in blobs
    )
