"""HTTP/3 checks against ostore with an independent stack (aioquic).

Usage: h3_checks.py HOST PORT CA_FILE SECRET BODY_FILE KEY
PUTs BODY_FILE as KEY over HTTP/3, reads it back whole and by ranges (one at a time and 32 at
once on the same connection), tries a request without credentials, and prints one JSON object
with what it saw (also: a PUT whose body ends before its Content-Length, and a GET of that
key). Then, resuming the TLS session on a new connection, a GET and a PUT sent in 0-RTT before
the handshake completes; and once more through a UDP relay that holds back the client's
handshake completion for a while, to see which early request the server answers before the
handshake completes (the GET) and which it holds until then (the PUT). The caller decides what
is right.
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


def _varint(d, j):
    n = 1 << (d[j] >> 6)
    v = d[j] & 0x3F
    for k in range(1, n):
        v = (v << 8) | d[j + k]
    return v, j + n


def packet_types(d):
    """The long-header packet types coalesced in a QUIC v1 datagram (0 Initial, 1 0-RTT,
    2 Handshake, 3 Retry); a short-header packet ends the list."""
    out, i = [], 0
    while i < len(d) and d[i] & 0x80:
        t = (d[i] >> 4) & 3
        out.append(t)
        if t == 3:
            break
        j = i + 5
        j += 1 + d[j]  # destination connection ID
        j += 1 + d[j]  # source connection ID
        if t == 0:
            tl, j = _varint(d, j)
            j += tl
        ln, j = _varint(d, j)
        i = j + ln
    return out


HANDSHAKE = 2


class HoldingRelay:
    """A UDP relay to the server that passes the client's first flight (Initial and 0-RTT
    packets) at once, and holds every client datagram from the first one carrying a Handshake
    packet (the client's Finished) for `hold` seconds: until then the server cannot complete
    the handshake. The server's datagrams pass at once."""

    def __init__(self, server, hold):
        self.server, self.hold = server, hold
        self.client = None
        self.state = "first flight"
        self.held = []

    async def start(self):
        loop = asyncio.get_running_loop()
        relay = self

        class Up(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if relay.client is not None:
                    relay.down.sendto(data, relay.client)

        class Down(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                relay.client = addr
                if relay.state == "first flight" and HANDSHAKE in packet_types(data):
                    relay.state = "holding"
                    loop.call_later(relay.hold, relay.release)
                if relay.state == "holding":
                    relay.held.append(data)
                else:
                    relay.up.sendto(data)

        self.up, _ = await loop.create_datagram_endpoint(Up, remote_addr=self.server)
        self.down, _ = await loop.create_datagram_endpoint(Down, local_addr=("127.0.0.1", 0))
        return self.down.get_extra_info("sockname")[1]

    def release(self):
        self.state = "released"
        for d in self.held:
            self.up.sendto(d)

    def close(self):
        self.up.close()
        self.down.close()


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
    out["tickets"] = len(tickets)
    if tickets:
        cfg0 = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, max_data=64 << 20, max_stream_data=16 << 20
        )
        cfg0.load_verify_locations(cafile=ca)
        cfg0.session_ticket = tickets[0]
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
    # The same through the holding relay, on the first connection's other ticket.
    if len(tickets) > 1:
        hold = 1.5

        async def counters():
            async with connect(host, port, configuration=cfg, create_protocol=Client) as m:
                r = await m.request("GET", authority, "/metrics", auth)
            text = bytes(r["body"]).decode()
            want = ("ostore_http3_early_requests_total", "ostore_http3_early_deferred_total")
            return {
                l.split()[0]: float(l.split()[1]) for l in text.splitlines() if l.startswith(want)
            }

        before = await counters()
        relay = HoldingRelay((host, port), hold)
        rport = await relay.start()
        cfg1 = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, max_data=64 << 20, max_stream_data=16 << 20,
            server_name=host,
        )
        cfg1.load_verify_locations(cafile=ca)
        cfg1.session_ticket = tickets[1]
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def timed(req):
            r = await req
            return r["status"], loop.time() - t0, bytes(r["body"])

        async with connect(
            "127.0.0.1", rport, configuration=cfg1, create_protocol=Client, wait_connected=False
        ) as c:
            get, put = await asyncio.gather(
                timed(c.request("GET", authority, path, auth + [("range", "bytes=0-99")])),
                timed(c.request("PUT", authority, path + ".held", auth, b"held until the handshake")),
            )
            out["held_accepted"] = c._quic.tls.early_data_accepted
        relay.close()
        after = await counters()
        out["held_s"] = hold
        out["held_get"], out["held_get_s"] = get[0], get[1]
        out["held_get_exact"] = get[2] == body[:100]
        out["held_put"], out["held_put_s"] = put[0], put[1]
        out["held_early"] = (
            after["ostore_http3_early_requests_total"] - before["ostore_http3_early_requests_total"]
        )
        out["held_deferred"] = (
            after["ostore_http3_early_deferred_total"] - before["ostore_http3_early_deferred_total"]
        )
    print(json.dumps(out))


asyncio.run(main())
