# The baselines the benchmarks measure relay against, each run as its own process
# (so it gets a core of its own, as `relay serve` does). Loopback only; SIGTERM stops them.
#
#   python bench/_baselines.py forwarder SMTP_PORT UPSTREAM_PORT WORKERS
#       A bare store-less SMTP forwarder: aiosmtpd accepts, answers 250 at once and
#       queues the message; WORKERS tasks, each with one reused aiosmtplib connection,
#       forward it to the upstream. No spool, no fsync, no events, no rewriting.
#   python bench/_baselines.py http PORT
#       A minimal aiohttp app: /o/{token} answers a static 1x1 GIF, /c/{token} a static
#       302, with the same headers relay sends. No token check, no event recording.
from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import sys
from typing import Any

HOST = "127.0.0.1"


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def forwarder(port: int, upstream_port: int, workers: int) -> None:
    import aiosmtplib
    from aiosmtpd.smtp import SMTP

    queue: asyncio.Queue[tuple[str, list[str], bytes]] = asyncio.Queue()

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            queue.put_nowait((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
            return "250 Ok queued"

    async def work() -> None:
        client: aiosmtplib.SMTP | None = None
        while True:
            mail_from, rcpts, data = await queue.get()
            for _ in range(3):  # bounded: reconnect at most twice per message
                try:
                    if client is None or not client.is_connected:
                        client = aiosmtplib.SMTP(hostname=HOST, port=upstream_port, timeout=30,
                                                 local_hostname="forwarder.bench")
                        await client.connect()
                    await client.sendmail(mail_from, rcpts, data)
                    break
                except (aiosmtplib.SMTPException, OSError) as e:
                    print(f"forwarder: {type(e).__name__}: {e}", file=sys.stderr)
                    with contextlib.suppress(Exception):
                        if client is not None:
                            client.close()
                    client = None
            queue.task_done()

    handler = Handler()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(handler, hostname="forwarder.bench", enable_SMTPUTF8=True, decode_data=False),
        HOST, port)
    tasks = [asyncio.create_task(work()) for _ in range(workers)]
    print(f"forwarder: SMTP on {HOST}:{port} -> {HOST}:{upstream_port}, {workers} workers", flush=True)
    try:
        await _until_signalled()
    finally:
        server.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(queue.join(), 10)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def http(port: int) -> None:
    from aiohttp import web

    pixel = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
    no_cache = {"Cache-Control": "no-store, no-cache, must-revalidate, private", "Pragma": "no-cache",
                "Expires": "Thu, 01 Jan 1970 00:00:00 GMT"}
    pixel_headers = {"Content-Type": "image/gif", **no_cache}
    redirect_headers = {"Location": "https://example.com/landing?utm_source=bench", **no_cache}

    async def open_(request: web.Request) -> web.Response:
        return web.Response(body=pixel, headers=pixel_headers)

    async def click(request: web.Request) -> web.Response:
        return web.Response(status=302, headers=redirect_headers)

    app = web.Application()
    app.router.add_get("/o/{token}", open_)
    app.router.add_get("/c/{rest:.+}", click)  # relay links: /c/{token}/{url}
    runner = web.AppRunner(app, access_log=None, handle_signals=False)  # as relay's tracking server
    await runner.setup()
    await web.TCPSite(runner, host=HOST, port=port).start()
    print(f"static http: {HOST}:{port}", flush=True)
    try:
        await _until_signalled()
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> None:
    if argv[:1] == ["forwarder"] and len(argv) == 4:
        asyncio.run(forwarder(int(argv[1]), int(argv[2]), int(argv[3])))
    elif argv[:1] == ["http"] and len(argv) == 2:
        asyncio.run(http(int(argv[1])))
    else:
        sys.exit(__doc__ or "usage: _baselines.py forwarder PORT UPSTREAM_PORT WORKERS | http PORT")


if __name__ == "__main__":
    main(sys.argv[1:])
