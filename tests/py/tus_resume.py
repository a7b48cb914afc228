"""A stock tus client (tuspy) uploads a file, and resumes it after the server was killed.

Driven by tests/tests/tus.rs over stdin/stdout:
  argv: BASE_URL SECRET FILE KEY CHUNK_BYTES CHUNKS_BEFORE_PAUSE
  prints "PAUSED <upload url> <offset>" after CHUNKS_BEFORE_PAUSE chunks, then waits for a
  line "RESUME <new base url>" (the restarted server), resumes the same upload with a fresh
  Uploader that asks the server for the offset, and prints "DONE <offset>".
"""
import sys
from urllib.parse import urlparse

from tusclient import client
from tusclient.uploader import Uploader

base, secret, path, key, chunk, before = sys.argv[1:7]
chunk, before = int(chunk), int(before)
headers = {"Authorization": "Bearer " + secret}

c = client.TusClient(base + "/uploads", headers=headers)
up = Uploader(path, client=c, chunk_size=chunk, metadata={"key": key}, upload_checksum=True)
for _ in range(before):
    up.upload_chunk()
print("PAUSED", up.url, up.offset, flush=True)

line = sys.stdin.readline().split()
assert line[0] == "RESUME", line
new_base = line[1]
url = new_base + urlparse(up.url).path
c2 = client.TusClient(new_base + "/uploads", headers=headers)
# A new client process would do exactly this: it knows the upload URL, not the offset.
up2 = Uploader(path, client=c2, url=url, chunk_size=chunk)
start = up2.offset
up2.upload()
print("DONE", start, up2.offset, flush=True)
