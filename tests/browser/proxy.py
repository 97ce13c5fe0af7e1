"""Serve a second ComfyUI frontend against an already running ComfyUI server.

A small same-origin proxy: a request for a file that exists in the frontend's static folder is answered
from there; everything else (the HTTP API, /ws, /extensions/<pack>/..., /view, /upload/...) is forwarded
to the server unchanged (Host header included, so ComfyUI's origin check sees the same origin as the page).
One ComfyUI process then serves both frontends, so a workflow queued identically from both pages runs once
and the second answer comes from ComfyUI's cache.
"""
from __future__ import annotations

import asyncio
import os
import threading

import aiohttp
from aiohttp import web

HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "content-length", "content-encoding"}


class FrontendProxy:
    def __init__(self, static_root: str, backend: str, port: int):
        self.root = os.path.realpath(static_root)
        self.backend = backend.rstrip("/")
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.loop = None
        self.thread = None
        self.runner = None
        self.session = None

    def _static_file(self, path: str) -> str | None:
        rel = path.lstrip("/") or "index.html"
        full = os.path.realpath(os.path.join(self.root, rel))
        if os.path.commonpath([full, self.root]) == self.root and os.path.isfile(full):
            return full
        return None

    async def _handle(self, request: web.Request):
        if request.method == "GET" and request.path != "/ws":
            f = self._static_file(request.path)
            if f:
                resp = web.FileResponse(f)
                if f.endswith("index.html"):
                    resp.headers["Cache-Control"] = "no-cache"
                return resp
        if request.path == "/ws" or request.path.endswith("/ws"):
            return await self._websocket(request)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        async with self.session.request(request.method, self.backend + request.path_qs, headers=headers,
                                        data=body if body else None, allow_redirects=False) as r:
            data = await r.read()
            out_headers = {k: v for k, v in r.headers.items() if k.lower() not in HOP_HEADERS}
            return web.Response(status=r.status, body=data, headers=out_headers)

    async def _websocket(self, request: web.Request):
        ws_out = web.WebSocketResponse(max_msg_size=0)
        await ws_out.prepare(request)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("host", "origin", "cookie", "user-agent")}
        async with self.session.ws_connect(self.backend + request.path_qs, headers=headers, max_msg_size=0) as ws_in:
            async def pump(src, dst):
                async for msg in src:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await dst.send_str(msg.data)
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        await dst.send_bytes(msg.data)
                    else:
                        break
            tasks = [asyncio.create_task(pump(ws_in, ws_out)), asyncio.create_task(pump(ws_out, ws_in))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
        await ws_out.close()
        return ws_out

    def start(self) -> "FrontendProxy":
        ready = threading.Event()
        errors = []

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)

            async def setup():
                self.session = aiohttp.ClientSession(auto_decompress=False)
                app = web.Application(client_max_size=1 << 30)
                app.router.add_route("*", "/{tail:.*}", self._handle)
                self.runner = web.AppRunner(app)
                await self.runner.setup()
                await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

            try:
                self.loop.run_until_complete(setup())
            except Exception as e:  # reported by start()
                errors.append(e)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="frontend-proxy", daemon=True)
        self.thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self):
        if not self.loop:
            return

        async def cleanup():
            await self.runner.cleanup()
            await self.session.close()

        fut = asyncio.run_coroutine_threadsafe(cleanup(), self.loop)
        try:
            fut.result(15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(15)
