"""The nginx configuration as a `conf.d` snippet, for a host whose nginx serves other sites too.

Debian's `/etc/nginx/nginx.conf` includes `/etc/nginx/conf.d/*.conf` inside its `http` block.
The snippet is the generated file's `http` block without the main-context lines (pid, workers,
events, error log), and with the `http`-wide settings (no body limit, no buffering, forwarded
headers, timeouts) moved into each Portway `server` block, so the other sites keep theirs.
Temporary folders are left to the main configuration, and the host-mapping ports (80/443 by
default) claim no `default_server`: the distribution's default site keeps that role.
"""

from __future__ import annotations

from portway.proxyconf.routes import ProxyConfigError

_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
_DROPPED = tuple(f"{kind}_temp_path" for kind in _TEMP_KINDS)


def _http_body(full: str) -> list[str]:
    lines = full.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "http {")
    except StopIteration:
        raise ProxyConfigError("the nginx configuration has no http block") from None
    end = max(i for i, line in enumerate(lines) if line.strip() == "}")
    return [line.removeprefix("    ") for line in lines[start + 1 : end]]


def nginx_snippet(full: str, shared_ports: tuple[int, ...] = (80, 443)) -> str:
    """`full` is a configuration rendered from nginx.conf.j2; returns the conf.d form.
    `shared_ports` are the host-mapping ports, where other sites listen too."""
    header = [line for line in full.splitlines() if line.startswith("#")]
    settings: list[str] = []
    blocks: list[str] = []
    depth = 0
    pending: list[str] = []  # comments and blank lines before the next line
    copies = 0
    for line in _http_body(full):
        stripped = line.strip()
        if depth == 0 and (not stripped or stripped.startswith("#")):
            pending.append(line)
            continue
        if depth == 0 and not stripped.endswith("{"):
            if not stripped.startswith(_DROPPED):
                settings += [*pending, line]
            pending = []
            continue
        blocks += pending
        pending = []
        blocks.append(_not_default(line, shared_ports))
        if depth == 0 and stripped.startswith("server ") and settings:
            # The first server block carries the comments that explain each setting.
            copy = _trim(settings) if not copies else [s for s in settings if "#" not in s]
            blocks += ["    " + s if s else s for s in _trim(copy)]
            blocks.append("")
            copies += 1
        depth += stripped.count("{") - stripped.count("}")
    text = [
        "# conf.d snippet: put it in /etc/nginx/conf.d/portway.conf (included in the http block",
        "# of the main nginx.conf), then: nginx -t && systemctl reload nginx",
        *(line for line in header[1:] if "nginx -c" not in line),
        "",
        *_trim(blocks),
    ]
    return "\n".join(text) + "\n"


def _not_default(line: str, shared_ports: tuple[int, ...]) -> str:
    words = line.strip().rstrip(";").split()
    if len(words) < 3 or words[0] != "listen" or "default_server" not in words:
        return line
    port = words[1].rpartition(":")[2]
    if not port.isdigit() or int(port) not in shared_ports:
        return line
    return line.replace(" default_server", "")


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines
