"""The upstream client against real CNCF distribution (anonymous, htpasswd, token mode), a
fault server for what distribution cannot do on demand, and unit tests of the breaker,
single-flight and spooled fan-out."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from portway.upstream import (
    SharedDownloads,
    SingleFlight,
    Spool,
    UpstreamBlockedError,
    UpstreamBreaker,
    UpstreamDigestMismatchError,
    UpstreamError,
    UpstreamNotFoundError,
    UpstreamRateLimitedError,
    UpstreamRegistry,
    UpstreamServerError,
    UpstreamTruncatedError,
    UpstreamUnreachableError,
    parse_challenges,
)
from portway.upstream.errors import parse_retry_after
from support.distribution import Distribution
from upstream_support import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    BackgroundLoop,
    FaultServer,
    PushedImage,
    Pusher,
    StorageServer,
    TokenService,
    basic_auth,
    bearer_auth,
    fixed,
    sha256,
    slow,
    stalled,
    truncated,
)

T = TypeVar("T")
ACCEPT = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST]


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@asynccontextmanager
async def client(url: str, **kwargs: Any) -> AsyncIterator[UpstreamRegistry]:
    async with aiohttp.ClientSession() as session:
        yield UpstreamRegistry(url, session, **kwargs)


@asynccontextmanager
async def counting_client(
    url: str, **kwargs: Any
) -> AsyncIterator[tuple[UpstreamRegistry, list[tuple[str, str]]]]:
    """A client whose session records every HTTP request it sends (method, URL)."""
    sent: list[tuple[str, str]] = []

    async def on_start(
        session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestStartParams
    ) -> None:
        sent.append((params.method, str(params.url)))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield UpstreamRegistry(url, session, **kwargs), sent


async def expect(kind: str, work: Awaitable[Any]) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await work
    assert info.value.kind == kind, str(info.value)
    return info.value


# -- fixtures: real registries ----------------------------------------------------------------


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@dataclass
class Upstream:
    registry: Distribution
    app: PushedImage  # OCI manifest, two layers
    docker: PushedImage  # Docker schema 2 manifest
    token: TokenService | None = None
    storage: StorageServer | None = None

    @property
    def url(self) -> str:
        return self.registry.url


def _fill(pusher: Pusher) -> tuple[PushedImage, PushedImage]:
    app = pusher.push_image("team/app", "v1", layer_sizes=(300_000, 5000), seed=1)
    pusher.push_image("team/app", "v2", seed=2)
    for i in range(3):
        pusher.push_image("team/app", f"x{i}", seed=10 + i)
    docker = pusher.push_image("tool", "latest", docker=True, seed=3)
    return app, docker


@pytest.fixture(scope="module")
def anonymous(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    registry = Distribution(tmp_path_factory.mktemp("anonymous")).start()
    app, docker = _fill(Pusher(registry.url))
    yield Upstream(registry, app, docker)
    registry.stop()


@pytest.fixture(scope="module")
def htpasswd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    registry = Distribution(tmp_path_factory.mktemp("htpasswd"), htpasswd=("alice", "s3cret"))
    registry.start()
    app, docker = _fill(Pusher(registry.url, basic_auth("alice", "s3cret")))
    yield Upstream(registry, app, docker)
    registry.stop()


def _token_upstream(
    root: Path, loop: BackgroundLoop, key_header: str, redirect: bool = False
) -> Upstream:
    service = TokenService(root / "token", users={"bob": "hunter2"}, key_header=key_header)
    service.start(loop)
    extra: dict[str, Any] = service.registry_config()
    storage = None
    if redirect:
        # blob GETs are redirected to another origin, as S3 or a CDN would be
        storage = StorageServer(loop, root / "registry" / "storage")
        storage.server.start()
        extra["middleware"] = {
            "storage": [{"name": "redirect", "options": {"baseurl": storage.url + "/"}}]
        }
    registry = Distribution(root / "registry", extra_config=extra).start()
    app, docker = _fill(Pusher(registry.url, bearer_auth(service, "bob")))
    return Upstream(registry, app, docker, service, storage)


@pytest.fixture(scope="module")
def token_mode(
    tmp_path_factory: pytest.TempPathFactory, loop_thread: BackgroundLoop
) -> Iterator[Upstream]:
    upstream = _token_upstream(tmp_path_factory.mktemp("token"), loop_thread, "kid", True)
    yield upstream
    upstream.registry.stop()
    assert upstream.token is not None and upstream.storage is not None
    upstream.token.stop()
    upstream.storage.server.stop()


@pytest.fixture
def faults(loop_thread: BackgroundLoop) -> Iterator[FaultServer]:
    server = FaultServer(loop_thread)
    server.server.start()
    yield server
    server.server.stop()


# -- unit: challenges, names, Retry-After -----------------------------------------------------


def test_challenges_with_quoted_commas_and_several_schemes() -> None:
    found = parse_challenges(
        [
            'Bearer realm="https://auth.example/token",service="registry.example",'
            'scope="repository:team/app:pull,push repository:base:pull",error="insufficient_scope"',
            'Basic realm="say \\"hi\\", please", Bearer realm=https://other/token',
        ]
    )
    assert [c.scheme for c in found] == ["bearer", "basic", "bearer"]
    assert found[0].params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:team/app:pull,push repository:base:pull",
        "error": "insufficient_scope",
    }
    assert found[1].get("realm") == 'say "hi", please'
    assert found[2].get("realm") == "https://other/token"
    assert parse_challenges(["", "Bearer", 'Basic REALM = "x"']) == [
        type(found[0])("bearer", {}),
        type(found[0])("basic", {"realm": "x"}),
    ]


def test_docker_hub_one_component_names_get_library() -> None:
    async def scenario() -> None:
        async with client("https://registry-1.docker.io") as hub:
            assert hub.remote_name("alpine") == "library/alpine"
            assert hub.remote_name("bitnami/redis") == "bitnami/redis"
        async with client("https://docker.io/") as hub:
            assert hub.remote_url == "https://registry-1.docker.io"
            assert hub.remote_name("nginx") == "library/nginx"
        async with client("http://127.0.0.1:5000/repository/hosted/") as other:
            assert other.remote_name("alpine") == "alpine"
            assert other.remote_url == "http://127.0.0.1:5000/repository/hosted"
            with pytest.raises(ValueError):
                other.remote_name("../etc")
            with pytest.raises(ValueError):
                await other.get_manifest("alpine", "bad/tag", ACCEPT)

    run(scenario())


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


# -- unit: breaker ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_breaker_blocks_after_consecutive_failures_then_half_opens() -> None:
    clock = FakeClock()
    breaker = UpstreamBreaker("http://up", failure_threshold=3, block_seconds=30, clock=clock)
    breaker.record_failure(UpstreamUnreachableError("http://up", "cannot connect"))
    breaker.record_failure(UpstreamServerError("http://up", "failed with 503", status=503))
    breaker.record_failure(UpstreamNotFoundError("http://up", "manifest not found"))  # an answer
    assert breaker.state().consecutive_failures == 0
    for _ in range(3):
        breaker.check()
        breaker.record_failure(UpstreamUnreachableError("http://up", "cannot connect"))
    state = breaker.state()
    assert state.blocked and state.consecutive_failures == 3
    assert state.blocked_until is not None
    assert state.blocked_until.timestamp() == clock.now + 30
    assert state.last_error == "upstream http://up: cannot connect"
    with pytest.raises(UpstreamBlockedError) as info:
        breaker.check()
    assert info.value.kind == "blocked" and "3 consecutive failures" in str(info.value)
    clock.now += 31
    breaker.check()  # half-open: let one through
    breaker.record_failure(UpstreamUnreachableError("http://up", "still down"))
    assert breaker.is_blocked()  # one more failure blocks again at once
    clock.now += 31
    breaker.record_success()
    state = breaker.state()
    assert not state.blocked and state.blocked_until is None and state.consecutive_failures == 0
    assert state.last_error == "upstream http://up: still down"  # kept for `repo show`


def test_breaker_honours_retry_after() -> None:
    clock = FakeClock()
    breaker = UpstreamBreaker("http://up", failure_threshold=5, block_seconds=30, clock=clock)
    breaker.record_failure(UpstreamRateLimitedError("http://up", "429", retry_after=120))
    assert breaker.is_blocked()
    clock.now += 100
    assert breaker.is_blocked()
    clock.now += 21
    assert not breaker.is_blocked()


# -- unit: single flight and spooled fan-out --------------------------------------------------


def test_single_flight_shares_one_call_and_its_exception() -> None:
    async def scenario() -> None:
        flight: SingleFlight[str, int] = SingleFlight()
        calls = 0
        gate = asyncio.Event()

        async def work() -> int:
            nonlocal calls
            calls += 1
            await gate.wait()
            return 42

        waiters = [asyncio.ensure_future(flight.do("k", work)) for _ in range(20)]
        await asyncio.sleep(0)
        assert flight.in_flight("k")
        gate.set()
        assert await asyncio.gather(*waiters) == [42] * 20
        assert calls == 1 and not flight.in_flight("k")
        assert await flight.do("k", work) == 42 and calls == 2  # no result caching

        async def boom() -> int:
            await asyncio.sleep(0.01)
            raise UpstreamNotFoundError("http://up", "manifest not found")

        results = await asyncio.gather(
            *(flight.do("x", boom) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, UpstreamNotFoundError) for r in results)
        assert not flight.in_flight("x")

    run(scenario())


def test_single_flight_survives_a_caller_going_away() -> None:
    async def scenario() -> None:
        flight: SingleFlight[str, str] = SingleFlight()
        gate = asyncio.Event()

        async def work() -> str:
            await gate.wait()
            return "done"

        first = asyncio.ensure_future(flight.do("k", work))
        second = asyncio.ensure_future(flight.do("k", work))
        await asyncio.sleep(0)
        first.cancel()  # the client that started it hangs up
        await asyncio.sleep(0)
        gate.set()
        assert await second == "done"
        assert first.cancelled()

    run(scenario())


def test_shared_downloads_serve_readers_as_bytes_arrive(tmp_path: Path) -> None:
    chunks = [bytes([i]) * 10_000 for i in range(50)]
    expected = b"".join(chunks)

    async def scenario() -> None:
        downloads: SharedDownloads[str] = SharedDownloads(tmp_path / "spool")
        fills = 0
        progress = asyncio.Event()

        async def fill(spool: Spool) -> None:
            nonlocal fills
            fills += 1
            spool.set_size(len(expected))
            for i, chunk in enumerate(chunks):
                await spool.write(chunk)
                if i == 10:
                    progress.set()
                await asyncio.sleep(0.002)

        first = downloads.follow("blob", fill)
        assert await first.wait_started() == len(expected)
        first_chunk = await first.chunks().__anext__()  # served before the download ends
        assert first_chunk == chunks[0] and downloads.in_flight("blob")
        await progress.wait()
        late = [downloads.follow("blob", fill) for _ in range(19)]  # join mid-download
        bodies = await asyncio.gather(*(r.read_all() for r in late))
        rest = await first.read_all()
        assert first_chunk + rest == expected
        assert all(body == expected for body in bodies)
        assert fills == 1
        await downloads.wait("blob")
        assert not downloads.in_flight("blob")
        assert list((tmp_path / "spool").iterdir()) == []  # spool file removed
        for reader in [first, *late]:
            reader.close()
        offset = downloads.follow("blob", fill, offset=len(expected) - 5)
        assert await offset.read_all() == expected[-5:] and fills == 2
        offset.close()

    run(scenario())


def test_shared_downloads_failure_reaches_every_reader(tmp_path: Path) -> None:
    async def scenario() -> None:
        downloads: SharedDownloads[str] = SharedDownloads(tmp_path)

        async def fill(spool: Spool) -> None:
            spool.set_size(100)
            await spool.write(b"x" * 40)
            await asyncio.sleep(0.01)
            raise UpstreamTruncatedError("http://up/v2/a/blobs/sha256:00", "ended after 40 bytes")

        readers = [downloads.follow("b", fill) for _ in range(3)]
        for reader in readers:
            with pytest.raises(UpstreamTruncatedError):
                await reader.read_all()
            reader.close()

        async def missing(spool: Spool) -> None:
            raise UpstreamNotFoundError("http://up", "blob not found")

        reader = downloads.follow("c", missing)
        with pytest.raises(UpstreamNotFoundError):  # followers learn it before any byte
            await reader.wait_started()
        reader.close()
        await downloads.wait("c")
        assert list(tmp_path.iterdir()) == []

    run(scenario())


# -- anonymous distribution -------------------------------------------------------------------


def test_ping_and_manifests_by_tag_and_digest(anonymous: Upstream) -> None:
    async def scenario() -> None:
        async with client(anonymous.url) as up:
            ping = await up.ping()
            assert ping.api_version == "registry/2.0" and ping.auth_scheme is None

            by_tag = await up.get_manifest("team/app", "v1", ACCEPT)
            assert by_tag.body == anonymous.app.manifest
            assert by_tag.media_type == OCI_MANIFEST
            assert by_tag.digest == anonymous.app.digest == sha256(by_tag.body)
            by_digest = await up.get_manifest("team/app", anonymous.app.digest, ACCEPT)
            assert by_digest == by_tag

            head = await up.head_manifest("team/app", "v1", ACCEPT)
            assert head.digest == anonymous.app.digest
            assert head.media_type == OCI_MANIFEST and head.size == len(by_tag.body)

            docker = await up.get_manifest("tool", "latest", [DOCKER_MANIFEST])
            assert docker.media_type == DOCKER_MANIFEST
            assert docker.digest == anonymous.docker.digest

    run(scenario())


def test_not_found_is_classified(anonymous: Upstream) -> None:
    async def scenario() -> None:
        async with client(anonymous.url) as up:
            err = await expect("not_found", up.get_manifest("team/app", "nope", ACCEPT))
            assert isinstance(err, UpstreamNotFoundError) and err.code == "MANIFEST_UNKNOWN"
            assert anonymous.url in str(err) and "manifest team/app:nope not found" in str(err)
            await expect("not_found", up.get_manifest("no/such", "v1", ACCEPT))
            await expect("not_found", up.head_manifest("team/app", "nope", ACCEPT))
            missing = sha256(b"never pushed")
            with pytest.raises(UpstreamNotFoundError) as info:
                async with up.open_blob("team/app", missing):
                    pass
            assert info.value.code == "BLOB_UNKNOWN"
            err = await expect("not_found", up.list_tags("no/such"))
            assert isinstance(err, UpstreamNotFoundError) and err.code == "NAME_UNKNOWN"
            assert "tags of no/such not found (NAME_UNKNOWN)" in str(err)

    run(scenario())


def test_blobs_stream_and_verify(anonymous: Upstream) -> None:
    async def scenario() -> None:
        async with client(anonymous.url) as up:
            for digest, data in anonymous.app.blobs.items():
                async with up.open_blob("team/app", digest) as blob:
                    assert blob.size == len(data)
                    chunks = [chunk async for chunk in blob.iter_chunks(32 * 1024)]
                assert b"".join(chunks) == data
            big = anonymous.app.layers[0]
            assert len(anonymous.app.blobs[big]) == 300_000
            # leaving early closes the response without reading the rest
            async with up.open_blob("team/app", big) as blob:
                async for _ in blob:
                    break

    run(scenario())


def test_list_tags(anonymous: Upstream) -> None:
    async def scenario() -> None:
        async with client(anonymous.url) as up:
            full = await up.list_tags("team/app")
            # distribution 2.8 neither sorts nor paginates (it ignores n and last)
            assert sorted(full.tags) == ["v1", "v2", "x0", "x1", "x2"] and full.next_last is None
            page = await up.list_tags("team/app", n=2)
            assert sorted(page.tags) == sorted(full.tags)

    run(scenario())


def test_list_tags_follows_link_pagination(faults: FaultServer) -> None:
    tags = ["a", "b", "c", "d", "e"]

    async def tag_list(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "100"))
        last = request.query.get("last")
        rest = [t for t in tags if last is None or t > last]
        page, more = rest[:n], rest[n:]
        headers = {}
        if more:
            headers["Link"] = f'</v2/team/app/tags/list?last={page[-1]}&n={n}>; rel="next"'
        return web.json_response({"name": "team/app", "tags": page}, headers=headers)

    faults.route("/v2/team/app/tags/list", tag_list)

    async def scenario() -> None:
        async with client(faults.url) as up:
            seen: list[str] = []
            last: str | None = None
            while True:
                page = await up.list_tags("team/app", n=2, last=last)
                seen += page.tags
                if page.next_last is None:
                    break
                last = page.next_last
            assert seen == tags

    run(scenario())


def test_search_is_none_when_the_upstream_has_no_v1_search(anonymous: Upstream) -> None:
    async def scenario() -> None:
        async with client(anonymous.url) as up:
            assert await up.search("app", n=10, page=1) is None

    run(scenario())


def test_twenty_cold_pulls_make_one_upstream_get(anonymous: Upstream, tmp_path: Path) -> None:
    digest = anonymous.app.layers[0]
    data = anonymous.app.blobs[digest]
    access_line = f'"GET /v2/team/app/blobs/{digest} HTTP/1.1" 200'
    log_before = anonymous.registry.access_log().count(access_line)

    async def scenario() -> None:
        async with counting_client(anonymous.url) as (up, sent):
            downloads: SharedDownloads[str] = SharedDownloads(tmp_path)

            async def fill(spool: Spool) -> None:
                async with up.open_blob("team/app", digest) as blob:
                    spool.set_size(blob.size)
                    async for chunk in blob:
                        await spool.write(chunk)

            async def pull() -> bytes:
                async with downloads.follow(digest, fill) as reader:
                    assert await reader.wait_started() == len(data)
                    return await reader.read_all()

            bodies = await asyncio.gather(*(pull() for _ in range(20)))
            assert all(body == data for body in bodies)
            assert [m for m, u in sent if digest in u] == ["GET"]

    run(scenario())
    log = anonymous.registry.access_log()
    assert log.count(access_line) - log_before == 1, "the registry saw one blob GET"


def test_upstream_killed_is_unreachable_and_then_blocked(tmp_path: Path) -> None:
    registry = Distribution(tmp_path / "doomed").start()
    pushed = Pusher(registry.url).push_image("team/app", "v1")

    async def scenario() -> None:
        breaker = UpstreamBreaker(registry.url, failure_threshold=2, block_seconds=60)
        async with client(registry.url, breaker=breaker, connect_timeout=2) as up:
            assert (await up.get_manifest("team/app", "v1", ACCEPT)).digest == pushed.digest
            registry.process.kill()
            err = await expect("unreachable", up.get_manifest("team/app", "v1", ACCEPT))
            assert registry.url in str(err) and "cannot connect" in str(err)
            await expect("unreachable", up.head_manifest("team/app", "v1", ACCEPT))
            err = await expect("blocked", up.get_manifest("team/app", "v1", ACCEPT))
            assert "2 consecutive failures" in str(err)
            state = up.state()
            assert state is not None and state.blocked and state.blocked_until is not None
            assert state.last_error is not None and "cannot connect" in state.last_error

    try:
        run(scenario())
    finally:
        registry.stop()


# -- htpasswd (Basic) -------------------------------------------------------------------------


def test_basic_credentials(htpasswd: Upstream) -> None:
    async def scenario() -> None:
        async with counting_client(htpasswd.url, username="alice", password="s3cret") as (up, sent):
            manifest = await up.get_manifest("team/app", "v1", ACCEPT)
            assert manifest.digest == htpasswd.app.digest
            assert up.auth.scheme == "basic"
            digest = htpasswd.app.layers[1]
            async with up.open_blob("team/app", digest) as blob:
                assert await blob.read() == htpasswd.app.blobs[digest]
            assert (await up.ping()).auth_scheme == "basic"
            # one 401 taught us the scheme; afterwards credentials go up front
            assert len(sent) == 4

        async with client(htpasswd.url, username="alice", password="wrong") as up:
            err = await expect("unauthorized", up.get_manifest("team/app", "v1", ACCEPT))
            assert "refused the configured credentials of user 'alice'" in str(err)
            assert htpasswd.url in str(err)

        async with client(htpasswd.url) as up:
            err = await expect("unauthorized", up.get_manifest("team/app", "v1", ACCEPT))
            assert "no credentials are configured" in str(err)

    run(scenario())


# -- token mode -------------------------------------------------------------------------------


def test_bearer_token_dance_and_cache(token_mode: Upstream) -> None:
    service = token_mode.token
    assert service is not None
    scope = "repository:team/app:pull"

    async def scenario() -> None:
        before = service.hits(scope)
        async with client(token_mode.url, username="bob", password="hunter2") as up:
            manifest = await up.get_manifest("team/app", "v1", ACCEPT)
            assert manifest.digest == token_mode.app.digest and up.auth.scheme == "bearer"
            await up.head_manifest("team/app", "v2", ACCEPT)
            await up.get_manifest("team/app", token_mode.app.digest, ACCEPT)
            assert {"v1", "v2"} <= set((await up.list_tags("team/app")).tags)
            assert service.hits(scope) - before == 1, "one token for the scope, then cached"
            await up.get_manifest("tool", "latest", [DOCKER_MANIFEST])
            assert service.hits("repository:tool:pull") == 1
            assert service.requests[-1].account == "bob" and service.requests[-1].authorized
            ping = await up.ping()
            assert ping.auth_scheme == "bearer"

    run(scenario())


def test_concurrent_requests_share_one_token_fetch(token_mode: Upstream) -> None:
    service = token_mode.token
    assert service is not None

    async def scenario() -> None:
        before = len(service.requests)
        async with client(token_mode.url, username="bob", password="hunter2") as up:
            await up.ping()  # learn the realm
            results = await asyncio.gather(
                *(up.get_manifest("team/app", f"x{i % 3}", ACCEPT) for i in range(12))
            )
            assert len({r.digest for r in results}) == 3
        assert len(service.requests) - before == 2  # ping's token and one for team/app

    run(scenario())


def test_token_refetched_after_it_expires(token_mode: Upstream) -> None:
    service = token_mode.token
    assert service is not None
    scope = "repository:team/app:pull"
    clock = FakeClock(1000.0)

    async def scenario() -> None:
        before = service.hits(scope)
        async with client(
            token_mode.url, username="bob", password="hunter2", clock=clock, token_margin=10
        ) as up:
            await up.get_manifest("team/app", "v1", ACCEPT)
            clock.now += 280  # expires_in is 300, margin 10
            await up.get_manifest("team/app", "v1", ACCEPT)
            assert service.hits(scope) - before == 1
            clock.now += 15
            await up.get_manifest("team/app", "v1", ACCEPT)
            assert service.hits(scope) - before == 2

    run(scenario())


def test_a_refused_cached_token_is_replaced_once(token_mode: Upstream) -> None:
    service = token_mode.token
    assert service is not None

    async def scenario() -> None:
        async with client(token_mode.url, username="bob", password="hunter2") as up:
            await up.ping()  # learn the realm, so the next token is fetched up front
            service.expired_next = 1
            before = service.hits("repository:team/app:pull")
            manifest = await up.get_manifest("team/app", "v1", ACCEPT)
            assert manifest.digest == token_mode.app.digest
            assert service.hits("repository:team/app:pull") - before == 2
            await up.get_manifest("team/app", "v2", ACCEPT)
            assert service.hits("repository:team/app:pull") - before == 2

    run(scenario())


def test_token_service_refuses_wrong_credentials(token_mode: Upstream) -> None:
    service = token_mode.token
    assert service is not None

    async def scenario() -> None:
        async with client(token_mode.url, username="bob", password="nope") as up:
            err = await expect("unauthorized", up.get_manifest("team/app", "v1", ACCEPT))
            assert "token service" in str(err) and "'bob'" in str(err)
            await expect("unauthorized", up.ping())
        async with client(token_mode.url) as up:  # the token service requires a login
            err = await expect("unauthorized", up.get_manifest("team/app", "v1", ACCEPT))
            assert "refused anonymous access" in str(err)
        async with client(token_mode.url, username="bob", password="hunter2") as up:
            service.deny.add("tool")  # bob's token carries no access to it
            try:
                err = await expect("unauthorized", up.get_manifest("tool", "latest", ACCEPT))
            finally:
                service.deny.discard("tool")
            assert "refused the token" in str(err) and "repository:tool:pull" in str(err)

    run(scenario())


def test_blob_redirect_to_storage_drops_authorization(token_mode: Upstream) -> None:
    storage = token_mode.storage
    assert storage is not None
    digest = token_mode.app.layers[0]

    async def scenario() -> None:
        async with counting_client(token_mode.url, username="bob", password="hunter2") as (
            up,
            sent,
        ):
            async with up.open_blob("team/app", digest) as blob:
                assert blob.url.startswith(storage.url)
                assert await blob.read() == token_mode.app.blobs[digest]
            assert any(u.startswith(storage.url) for _, u in sent)
        assert storage.seen and all("Authorization" not in h for h in storage.seen)

    run(scenario())


def test_x5c_signed_tokens_and_anonymous_pull(tmp_path: Path, loop_thread: BackgroundLoop) -> None:
    upstream = _token_upstream(tmp_path, loop_thread, "x5c")
    service = upstream.token
    assert service is not None
    service.allow_anonymous = True

    async def scenario() -> None:
        async with client(upstream.url) as up:
            manifest = await up.get_manifest("team/app", "v1", ACCEPT)
            assert manifest.digest == upstream.app.digest
            assert service.requests[-1].account is None

    try:
        run(scenario())
    finally:
        upstream.registry.stop()
        service.stop()


# -- faults a real registry cannot produce on demand ------------------------------------------


def test_rate_limited_with_retry_after(faults: FaultServer) -> None:
    faults.route(
        "/v2/team/app/manifests/v1",
        fixed(429, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}', {"Retry-After": "7"}),
    )

    async def scenario() -> None:
        breaker = UpstreamBreaker(faults.url, failure_threshold=5)
        async with client(faults.url, breaker=breaker) as up:
            err = await expect("rate_limited", up.get_manifest("team/app", "v1", ACCEPT))
            assert isinstance(err, UpstreamRateLimitedError) and err.retry_after == 7
            assert "retry after 7 s" in str(err) and faults.url in str(err)
            await expect("blocked", up.get_manifest("team/app", "v1", ACCEPT))
        assert faults.hits.count("/v2/team/app/manifests/v1") == 1

    run(scenario())


def test_server_errors_and_timeouts(faults: FaultServer) -> None:
    faults.route("/v2/team/app/manifests/v1", fixed(503, b"maintenance"))
    faults.route("/v2/team/app/manifests/slow", slow(2.0))
    stuck = sha256(b"x" * 1000)
    faults.route(f"/v2/team/app/blobs/{stuck}", stalled(1000, b"x" * 100, 2.0))

    async def scenario() -> None:
        async with client(faults.url, manifest_timeout=0.3) as up:
            err = await expect("server_error", up.get_manifest("team/app", "v1", ACCEPT))
            assert "503" in str(err) and f"{faults.url}/v2/team/app/manifests/v1" in str(err)
            await expect("server_error", up.head_manifest("team/app", "v1", ACCEPT))
            err = await expect("timeout", up.get_manifest("team/app", "slow", ACCEPT))
            assert "0.3 s" in str(err)
        async with client(faults.url, read_timeout=0.3) as up:
            with pytest.raises(UpstreamError) as stalled_body:
                async with up.open_blob("team/app", stuck) as blob:
                    await blob.read()
            assert stalled_body.value.kind == "timeout"
            assert "stalled: no data for 0.3 s after 100 bytes" in str(stalled_body.value)
        async with client("http://127.0.0.1:9") as up:  # nothing listens on the discard port
            await expect("unreachable", up.ping())

    run(scenario())


def test_truncated_and_corrupted_bodies(faults: FaultServer) -> None:
    data = b"layer bytes " * 1000
    digest = sha256(data)
    faults.route(f"/v2/team/app/blobs/{digest}", truncated(len(data), data[:5000]))
    wrong = sha256(b"something else")
    faults.route(f"/v2/team/app/blobs/{wrong}", fixed(200, data))
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode()
    faults.route(
        "/v2/team/app/manifests/v1",
        fixed(200, manifest, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": wrong}),
    )
    faults.route(f"/v2/team/app/manifests/{wrong}", fixed(200, manifest))
    faults.route(
        "/v2/team/app/manifests/untyped", fixed(200, manifest, {"Content-Type": "text/plain"})
    )

    async def scenario() -> None:
        async with client(faults.url) as up:
            with pytest.raises(UpstreamTruncatedError) as cut:
                async with up.open_blob("team/app", digest) as blob:
                    await blob.read()
            assert cut.value.kind == "unreachable"
            with pytest.raises(UpstreamDigestMismatchError) as bad:
                async with up.open_blob("team/app", wrong) as blob:
                    await blob.read()
            assert "discarded" in str(bad.value)
            async with up.open_blob("team/app", wrong, verify=False) as blob:
                assert await blob.read() == data  # the caller verifies instead
            err = await expect("digest_mismatch", up.get_manifest("team/app", "v1", ACCEPT))
            assert "Docker-Content-Digest" in str(err)
            err = await expect("digest_mismatch", up.get_manifest("team/app", wrong, ACCEPT))
            assert "requested" in str(err)
            untyped = await up.get_manifest("team/app", "untyped", ACCEPT)
            assert untyped.media_type == OCI_MANIFEST and untyped.digest == sha256(manifest)

    run(scenario())


def test_search_is_forwarded_when_the_upstream_has_it(faults: FaultServer) -> None:
    async def search(request: web.Request) -> web.StreamResponse:
        assert request.query["q"] == "redis" and request.query["n"] == "2"
        results = [{"name": "library/redis", "description": "cache", "star_count": 9}]
        return web.json_response(
            {
                "query": "redis",
                "num_results": 1,
                "num_pages": 1,
                "page": 1,
                "page_size": 2,
                "results": results,
            }
        )

    faults.route("/v1/search", search)

    async def scenario() -> None:
        async with client(faults.url) as up:
            page = await up.search("redis", n=2, page=1)
            assert page is not None and page.num_results == 1
            assert page.results[0]["name"] == "library/redis"

    run(scenario())


def test_error_messages_name_the_upstream(faults: FaultServer) -> None:
    async def scenario() -> None:
        async with client(faults.url) as up:
            err = await expect("not_found", up.get_manifest("team/app", "v1", ACCEPT))
            assert re.match(
                rf"upstream {re.escape(faults.url)}/v2/team/app/manifests/v1: ", str(err)
            )

    run(scenario())
