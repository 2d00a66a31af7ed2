"""A worker whose descriptors run out for another reason than connections (the kernel answers
`accept` with EMFILE) backs off instead of spinning, logs once, and serves again when
descriptors come back. The child process below runs Portway's listener with a real limit."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

CHILD = r"""
import asyncio, json, logging, os, resource, sys
from aiohttp import web
from portway.http.listeners import ConnectionGate, ListenerSite, bind_listener
from portway.http.protocol import RegistryRunner, RegistryServer

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")

async def hello(request):
    return web.Response(text="ok")

async def main():
    app = web.Application()
    app.router.add_get("/", hello)
    runner = RegistryRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    server = runner.server
    assert isinstance(server, RegistryServer)
    gate = ConnectionGate(10_000, server.waiting_connections)  # far above the real limit
    server.on_connection_lost = gate.closed
    sock = bind_listener("127.0.0.1:0")[0]
    site = ListenerSite(runner, sock, gate)
    await site.start()
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    hog = []
    try:
        while True:
            hog.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    print(json.dumps({"port": site.port}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # the clients are waiting now
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(3)
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    for fd in hog:
        os.close(fd)
    print(json.dumps({"cpu_seconds": used}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    await runner.cleanup()

asyncio.run(main())
"""


def test_accept_out_of_descriptors_backs_off_logs_once_and_recovers() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    clients: list[socket.socket] = []
    try:
        port = json.loads(child.stdout.readline())["port"]
        for _ in range(20):  # queued by the kernel; the worker cannot accept them yet
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            clients.append(sock)
        child.stdin.write("go\n")
        child.stdin.flush()
        cpu_seconds = json.loads(child.stdout.readline())["cpu_seconds"]
        # descriptors are back: every queued client is served within a couple of seconds
        start = time.monotonic()
        for sock in clients:
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok"), answer
        took = time.monotonic() - start
        child.stdin.write("stop\n")
        child.stdin.flush()
        child.wait(30)
    finally:
        for sock in clients:
            sock.close()
        if child.poll() is None:
            child.kill()
            child.wait()
    log = child.stderr.read()
    print(f"cpu {cpu_seconds:.3f}s in 3s out of descriptors; served all {took:.2f}s later")
    print(log)
    lines = [x for x in log.splitlines() if x.strip()]
    assert cpu_seconds < 0.5, cpu_seconds  # backed off, did not spin on accept
    assert len([x for x in lines if "connection limit reached" in x]) == 1, lines
    assert "accept ran out of descriptors" in log
    assert len(lines) <= 3, lines
    assert took < 5, took
    assert child.returncode == 0, log


pytestmark = pytest.mark.slow
