"""HTTP/3 checks against ostore with an independent stack (aioquic).

Usage: h3_checks.py HOST PORT CA_FILE SECRET BODY_FILE KEY
PUTs BODY_FILE as KEY over HTTP/3, reads it back whole and by ranges (one at a time and 32 at
once on the same connection), tries a request without credentials, and prints one JSON object
with what it saw (also: a PUT whose body ends before its Content-Length, and a GET of that
key). Then, resuming the TLS session on a new connection, a GET and a PUT sent in 0-RTT before
the handshake completes. The caller decides what is right.
"""
import asyncio
import json
import sys

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamReset


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._waiting = {}

    def quic_event_received(self, event):
        if isinstance(event, StreamReset) and event.stream_id in self._waiting:
            fut, _ = self._waiting.pop(event.stream_id)
            fut.set_exception(RuntimeError(f"stream reset {event.error_code:#x}"))
        if isinstance(event, ConnectionTerminated):
            for fut, _ in self._waiting.values():
                if not fut.done():
                    fut.set_exception(RuntimeError(f"connection closed: {event.reason_phrase}"))
            self._waiting.clear()
        for e in self._http.handle_event(event):
            if not isinstance(e, (HeadersReceived, DataReceived)) or e.stream_id not in self._waiting:
                continue
            fut, st = self._waiting[e.stream_id]
            if isinstance(e, HeadersReceived):
                if st["status"] is None:
                    st["status"] = int(dict(e.headers)[b":status"])
                    st["headers"] = {k.decode(): v.decode() for k, v in e.headers}
            else:
                st["body"] += e.data
            if e.stream_ended:
                self._waiting.pop(e.stream_id)
                fut.set_result(st)

    async def request(self, method, authority, path, headers=(), body=None):
        sid = self._quic.get_next_available_stream_id()
        self._http.send_headers(
            sid,
            [
                (b":method", method.encode()),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ]
            + [(k.lower().encode(), v.encode()) for k, v in headers],
            end_stream=body is None,
        )
        if body is not None:
            self._http.send_data(sid, body, end_stream=True)
        fut = self._loop.create_future()
        self._waiting[sid] = (fut, {"status": None, "headers": {}, "body": bytearray()})
        self.transmit()
        return await fut


async def main():
    host, port, ca, secret, body_file, key = sys.argv[1:7]
    port = int(port)
    body = open(body_file, "rb").read()
    auth = [("authorization", f"Bearer {secret}")]
    authority = f"{host}:{port}"
    path = f"/objects/{key}"
    cfg = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, max_data=64 << 20, max_stream_data=16 << 20
    )
    cfg.load_verify_locations(cafile=ca)
    out = {}
    tickets = []
    async with connect(
        host, port, configuration=cfg, create_protocol=Client,
        session_ticket_handler=tickets.append,
    ) as c:
        r = await c.request("PUT", authority, path, auth, body)
        out["put"] = r["status"]
        r = await c.request("GET", authority, path, auth)
        out["get"] = r["status"]
        out["get_len"] = len(r["body"])
        out["get_exact"] = bytes(r["body"]) == body
        r = await c.request("GET", authority, path, auth + [("range", "bytes=1000-1999")])
        out["range"] = r["status"]
        out["range_exact"] = bytes(r["body"]) == body[1000:2000]
        r = await c.request("GET", authority, path)
        out["no_credentials"] = r["status"]
        # A body that ends before its Content-Length: refused, and nothing stored.
        short = body[:5000]
        r = await c.request(
            "PUT", authority, path + ".short", auth + [("content-length", "6000")], short
        )
        out["short_body"] = r["status"]
        r = await c.request("GET", authority, path + ".short", auth)
        out["short_get"] = r["status"]
        # 32 different ranges at once on this one connection.
        n = len(body)
        ranges = [((i * 104729) % (n - 70000), 65536 + i) for i in range(32)]
        rs = await asyncio.gather(
            *(
                c.request("GET", authority, path, auth + [("range", f"bytes={a}-{a + ln - 1}")])
                for a, ln in ranges
            )
        )
        out["concurrent"] = len(rs)
        out["concurrent_206"] = sum(1 for r in rs if r["status"] == 206)
        out["concurrent_exact"] = sum(
            1 for r, (a, ln) in zip(rs, ranges) if bytes(r["body"]) == body[a : a + ln]
        )
    # 0-RTT: a new connection resuming the session sends both requests in its first flight.
    out["ticket"] = bool(tickets)
    if tickets:
        cfg0 = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, max_data=64 << 20, max_stream_data=16 << 20
        )
        cfg0.load_verify_locations(cafile=ca)
        cfg0.session_ticket = tickets[-1]
        async with connect(
            host, port, configuration=cfg0, create_protocol=Client, wait_connected=False
        ) as c:
            early = [
                c.request("GET", authority, path, auth + [("range", "bytes=0-99")]),
                c.request("PUT", authority, path + ".early", auth, b"sent in 0-RTT"),
            ]
            out["early_sent_before_handshake"] = not c._quic._handshake_complete
            get, put = await asyncio.gather(*early)
            out["early_get"] = get["status"]
            out["early_get_exact"] = bytes(get["body"]) == body[:100]
            out["early_put"] = put["status"]
            out["early_accepted"] = c._quic.tls.early_data_accepted
            out["session_resumed"] = c._quic.tls.session_resumed
    print(json.dumps(out))


asyncio.run(main())
