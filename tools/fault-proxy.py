#!/usr/bin/python3
"""A fault-injecting HTTP proxy in front of a real registry, for the tests
that show what loci does when a registry misbehaves (tests/faults.rs).

It forwards each request to TARGET, one connection per request, and,
while a fault rule matches the request (method and a regex on the path),
answers instead with the fault:

  status      answer `code` (e.g. 503, or 429 with Retry-After: 1) without
              asking the registry
  reset       send the headers and half the body, then reset the connection
  truncate    send the headers (full Content-Length) and half the body, then
              close
  stall       send the headers, then nothing for `seconds`
  oversize    append 1 MiB to the body (Content-Length grown to match)
  corrupt     flip a byte in the middle of the body
  pad         pad a JSON body with spaces to `bytes` bytes
  challenge   answer 401 with `WWW-Authenticate: <header>`, without asking
              the registry
  body        answer 200 with a JSON token body of `bytes` bytes, without
              asking the registry (a token endpoint)

Rules are set with `POST /__fault` (JSON: mode, path, method, count,
code, seconds, bytes; count = how many matching requests it hits, -1 for
all), cleared with `DELETE /__fault`; `GET /__fault` lists them with how
many requests each hit. Listens on 127.0.0.1 only.

Usage: fault-proxy.py LISTEN_PORT TARGET_HOST:PORT
"""
import asyncio, json, re, sys

rules = []


def read_json(body):
    return json.loads(body.decode() or "{}")


async def read_head(reader, first=b""):
    head = first + await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    start, headers = lines[0], {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return start, headers, head


async def read_body(reader, headers):
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return body
            body += chunk[:-2]
    return b""


def response(code, reason, headers, body):
    headers = dict(headers)
    headers["content-length"] = str(len(body))
    headers["connection"] = "close"
    head = f"HTTP/1.1 {code} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1"), body


def matching_rule(method, path):
    for rule in rules:
        if rule["count"] != 0 and rule.get("method", method) == method and re.search(rule["path"], path):
            if rule["count"] > 0:
                rule["count"] -= 1
            rule["hits"] = rule.get("hits", 0) + 1
            return rule
    return None


async def control(method, body, writer):
    if method == "POST":
        rule = read_json(body)
        rule.setdefault("count", -1)
        rules.append(rule)
    elif method == "DELETE":
        rules.clear()
    head, out = response(200, "OK", {"content-type": "application/json"}, json.dumps(rules).encode())
    writer.write(head + out)


async def forward(target, start, headers, body):
    host, port = target.rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    headers = {k: v for k, v in headers.items() if k not in ("connection", "keep-alive")}
    headers["connection"] = "close"
    w.write((start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode("latin-1") + body)
    await w.drain()
    status, resp_headers, _ = await read_head(r)
    resp_body = await read_body(r, resp_headers) if not start.startswith("HEAD") else b""
    if "content-length" not in resp_headers and "transfer-encoding" not in resp_headers and not start.startswith("HEAD"):
        resp_body = await r.read()
    w.close()
    parts = status.split(" ", 2)
    resp_headers.pop("transfer-encoding", None)
    return int(parts[1]), parts[2] if len(parts) > 2 else "", resp_headers, resp_body


async def handle(reader, writer, target):
    try:
        first = await reader.readexactly(1)
        if first == b"\x16":
            # A TLS handshake: this proxy speaks plain HTTP only, as a plain
            # registry does.
            print("refused a TLS handshake", flush=True)
            return
        start, headers, _ = await read_head(reader, first)
        method, path, _ = start.split(" ", 2)
        body = await read_body(reader, headers)
        if path.startswith("/__fault"):
            await control(method, body, writer)
            return
        rule = matching_rule(method, path)
        mode = rule and rule["mode"]
        if mode == "challenge":
            head, out = response(401, "Unauthorized", {"www-authenticate": rule["header"]}, b"")
            writer.write(head + out)
            return
        if mode == "body":
            token = b'{"token": "' + b"t" * max(0, int(rule["bytes"]) - 13) + b'"}'
            head, out = response(200, "OK", {"content-type": "application/json"}, token)
            writer.write(head + out)
            await writer.drain()
            return
        if mode == "status":
            code = int(rule.get("code", 503))
            extra = {"retry-after": "1"} if code == 429 else {}
            head, out = response(code, "Fault", extra, b"")
            writer.write(head + out)
            return
        code, reason, resp_headers, resp_body = await forward(target, start, headers, body)
        if method == "HEAD":
            head, _ = response(code, reason, resp_headers, b"")
            head = head.replace(b"content-length: 0", f"content-length: {resp_headers.get('content-length', '0')}".encode())
            writer.write(head)
            return
        if mode == "oversize":
            resp_body += b"\0" * (1 << 20)
        elif mode == "corrupt" and resp_body:
            i = len(resp_body) // 2
            resp_body = resp_body[:i] + bytes([resp_body[i] ^ 0xFF]) + resp_body[i + 1:]
        elif mode == "pad":
            resp_body = resp_body + b" " * max(0, int(rule["bytes"]) - len(resp_body))
        head, out = response(code, reason, resp_headers, resp_body)
        if mode in ("reset", "truncate"):
            writer.write(head + out[: len(out) // 2])
            await writer.drain()
            if mode == "reset":
                writer.transport.abort()
            return
        if mode == "stall":
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(float(rule.get("seconds", 60)))
            return
        writer.write(head + out)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        if not writer.transport.is_closing():
            writer.close()


async def main():
    port, target = int(sys.argv[1]), sys.argv[2]
    server = await asyncio.start_server(lambda r, w: handle(r, w, target), "127.0.0.1", port)
    # Port 0 takes a free one: the line says which.
    port = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{port} -> {target}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
