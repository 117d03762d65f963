"""A TCP proxy on loopback that can silence the connections passing through it.

What a sleeping laptop or a NAT that forgot a connection does to a client: its socket stays
open, its own writes still go out, and nothing comes back. :meth:`SilencingProxy.silence`
does exactly that to every connection open at the time (what the server sends is read and
thrown away); connections made afterwards are forwarded normally, as after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    silenced: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class SilencingProxy:
    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port  # 0: the kernel chooses
        self.links: list[Link] = []
        self._server: asyncio.Server | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return len(self.links)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def silence(self) -> None:
        """From now on, drop what the server sends on every connection open now."""
        for link in self.links:
            link.silenced = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        link = Link(writer, up_writer)
        self.links.append(link)
        link.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, link, upstream=True)),
            asyncio.create_task(self._pipe(up_reader, writer, link, upstream=False)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: Link,
        *,
        upstream: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if upstream or not link.silenced:
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self.links:
            for task in link.tasks:
                task.cancel()
            link.client.close()
            link.upstream.close()
        for link in self.links:
            await asyncio.gather(*link.tasks, return_exceptions=True)
            for writer in (link.client, link.upstream):
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def silencing_proxy(target_port: int) -> AsyncIterator[SilencingProxy]:
    proxy = SilencingProxy(target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
