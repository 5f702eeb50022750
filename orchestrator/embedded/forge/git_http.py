"""The local forge's git side: smart HTTP bridged to ``git http-backend``.

``git push`` and ``git fetch`` against the forge must really move objects,
so the forge does not imitate git's protocol: it hands each smart-HTTP
request to the real ``git http-backend`` as a CGI, streaming bodies both
ways. That bridge (the CGI environment, the header block, the Basic-auth
check against the token) is a job of its own, apart from the REST API.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import os
from pathlib import Path
from typing import Any

from aiohttp import web


def git_env() -> dict[str, str]:
    """git's environment: no system or global config of the machine's."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "HOME": os.devnull,
    }


async def _feed(request: web.Request, stdin: asyncio.StreamWriter) -> None:
    try:
        async for chunk in request.content.iter_chunked(65536):
            stdin.write(chunk)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stdin.close()


async def _cgi_headers(stdout: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The CGI response's header block: its ``Status`` and the other headers."""
    status, headers = 200, {}
    while True:
        line = (await stdout.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            return status, headers
        key, _, value = line.partition(":")
        if key.lower() == "status":
            status = int(value.split()[0])
        else:
            headers[key.strip()] = value.strip()


def git_user(request: web.Request, token: str | None) -> str | None:
    """The Basic-auth user when its password is the token (any user name)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or token is None:
        return None
    try:
        user, _, password = base64.b64decode(value.strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user if hmac.compare_digest(password.encode(), token.encode()) else None


async def serve(
    request: web.Request,
    *,
    git: str,
    bare_repo: Path,
    token: str | None,
    log: list[dict[str, Any]],
) -> web.StreamResponse:
    """Smart HTTP through ``git http-backend`` (CGI), bodies streamed both ways.

    ``git`` is the git CLI, ``bare_repo`` the repository served; a request
    authenticates with Basic auth whose password is ``token``, and each one
    is appended to ``log`` (method, path, user, encoding, status, stderr).
    """
    user = git_user(request, token)
    entry: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "user": user,
        "encoding": request.headers.get("Content-Encoding"),
    }
    log.append(entry)
    if user is None:
        entry["status"] = 401
        return web.Response(
            status=401,
            text="the forge refused the credentials\n",
            headers={"WWW-Authenticate": 'Basic realm="agog forge"'},
        )
    env = {
        **git_env(),
        "GIT_PROJECT_ROOT": str(bare_repo),
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_INFO": "/" + request.match_info["tail"],
        "REQUEST_METHOD": request.method,
        "QUERY_STRING": request.query_string,
        "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        "REMOTE_USER": user,
        "REMOTE_ADDR": request.remote or "127.0.0.1",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    for header, variable in (
        ("Content-Length", "CONTENT_LENGTH"),
        ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
        ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
    ):
        if header in request.headers:
            env[variable] = request.headers[header]
    proc = await asyncio.create_subprocess_exec(
        git,
        "http-backend",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    feeding = asyncio.create_task(_feed(request, proc.stdin))
    errors = asyncio.create_task(proc.stderr.read())
    try:
        status, headers = await _cgi_headers(proc.stdout)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        while chunk := await proc.stdout.read(65536):
            await response.write(chunk)
        await response.write_eof()
        await feeding
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    finally:
        feeding.cancel()
        await proc.wait()
    entry.update(status=status, stderr=(await errors).decode(errors="replace")[-2000:])
    return response
