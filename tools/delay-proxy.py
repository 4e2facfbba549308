#!/usr/bin/python3
"""A TCP delay line: forwards LISTEN to TARGET, delivering every byte
DELAY_MS after it arrived, in each direction (so a round trip costs twice
that). tools/bench.py puts it in front of the registry inside the link's
network namespace when the kernel has no netem; tc's tbf still shapes the
rate on the veth pair.

Usage: delay-proxy.py LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS
"""
import asyncio, sys, time


async def pipe(reader, writer, delay):
    """Copies reader to writer, each piece sent `delay` s after it came."""
    queue = asyncio.Queue()

    async def receive():
        while True:
            data = await reader.read(256 << 10)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                return

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(receive(), send())
    except (ConnectionError, asyncio.IncompleteReadError):
        writer.close()


async def main():
    listen, target, delay_ms = sys.argv[1], sys.argv[2], float(sys.argv[3])
    delay = delay_ms / 1000
    t_host, t_port = target.rsplit(":", 1)

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(t_host, int(t_port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, server_writer, delay),
                             pipe(server_reader, client_writer, delay),
                             return_exceptions=True)
        for w in (client_writer, server_writer):
            w.close()

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
