"""A TCP proxy on 127.0.0.1 that the test controls, between the controller and an agent's port:
the node's address in the database is the proxy's. Two ways to cut the link:

- `cut("close")`: every connection is closed on both sides (the peers see FIN) and new ones are
  accepted and closed at once: an agent host that went away, or a firewall that resets.
- `cut("blackhole")`: nothing moves any more and nothing is closed: no byte is read or forwarded
  (what was read is held, never lost, so the streams stay intact) and a new connection is
  accepted but gets no answer: a partition, or a host frozen mid-flight.

`heal()` lets bytes through again; a connection still open resumes where it stopped.
"""
import asyncio
import threading


class TcpProxy:
    def __init__(self, target_port, target_host="127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = None
        self.mode = "open"
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._flowing = None   # asyncio.Event: set while bytes may move
        self._open = set()     # writers of live connections, both sides
        self._server = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="chaos-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, ready):
        asyncio.set_event_loop(self._loop)

        async def start():
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(start())
        ready.set()
        self._loop.run_forever()

    def _call(self, fn):
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(10)

    # --- the test's controls -------------------------------------------------------------------
    def cut(self, how):
        assert how in ("close", "blackhole"), how

        async def do():
            self.mode = how
            if how == "close":
                for writer in list(self._open):
                    writer.close()   # FIN to both peers
                self._open.clear()
            else:
                self._flowing.clear()

        self._call(do)

    def heal(self):
        async def do():
            self.mode = "open"
            self._flowing.set()

        self._call(do)

    def close(self):
        async def do():
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            self._open.clear()

        try:
            self._call(do)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # --- the connections ---------------------------------------------------------------------
    async def _accept(self, client_reader, client_writer):
        self.connections += 1
        if self.mode == "close":
            client_writer.transport.abort()
            return
        self._open.add(client_writer)
        upstream_writer = None
        try:
            await self._flowing.wait()   # blackholed: the client's bytes wait in the kernel
            if self.mode == "close" or client_writer not in self._open:
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            self._open.add(upstream_writer)
            await asyncio.gather(self._pump(client_reader, upstream_writer),
                                 self._pump(upstream_reader, client_writer))
        except (ConnectionError, OSError):
            pass
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    self._open.discard(writer)
                    writer.transport.abort()

    async def _pump(self, reader, writer):
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()   # read just before a cut: held, not sent, not lost
                if writer.transport.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()   # one side gone: the other goes too
