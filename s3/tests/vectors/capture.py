import socket, threading, sys, os, time, json
import boto3
from botocore.config import Config

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(8)
port = srv.getsockname()[1]
captured = []

def serve():
    while True:
        c, _ = srv.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            d = c.recv(65536)
            if not d: break
            data += d
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        hdrs = {}
        for l in lines[1:]:
            k, _, v = l.partition(b":")
            hdrs[k.strip().lower()] = v.strip()
        body = rest
        if b"content-length" in hdrs:
            n = int(hdrs[b"content-length"])
            while len(body) < n:
                d = c.recv(65536)
                if not d: break
                body += d
        elif hdrs.get(b"transfer-encoding", b"").lower() == b"chunked":
            while not body.endswith(b"0\r\n\r\n"):
                d = c.recv(65536)
                if not d: break
                body += d
        captured.append(head + b"\r\n\r\n" + body)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: \"d41d8cd98f00b204e9800998ecf8427e\"\r\nConnection: close\r\n\r\n")
        c.close()

threading.Thread(target=serve, daemon=True).start()
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="root",
                  aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
def attempt(name, f):
    try: f()
    except Exception as e: print(name, "->", type(e).__name__)
attempt("put", lambda: s3.put_object(Bucket="photos", Key="a b/c+d.txt", Body=b"hello world"))
attempt("put_sha256", lambda: s3.put_object(Bucket="photos", Key="k2", Body=b"x" * 70000, ChecksumAlgorithm="SHA256"))
attempt("put_empty", lambda: s3.put_object(Bucket="photos", Key="empty", Body=b""))
attempt("list", lambda: s3.list_objects_v2(Bucket="photos", Prefix="a b/", Delimiter="/"))
attempt("create", lambda: s3.create_bucket(Bucket="newbucket"))
time.sleep(0.3)
now = int(time.time())
for i, raw in enumerate(captured):
    with open(os.path.join(out, f"boto3-{i:02}.http"), "wb") as f: f.write(raw)
# boto3's default presigned URL is SigV2 (AWSAccessKeyId, Signature, Expires) unless the client
# is configured for s3v4: both are recorded.
v4 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="root",
                  aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
params = {"Bucket": "photos", "Key": "a b/c+d.txt"}
with open(os.path.join(out, "meta.json"), "w") as f:
    json.dump({"captured_at": now, "boto3": boto3.__version__,
               "presigned_v4": v4.generate_presigned_url("get_object", Params=params, ExpiresIn=600),
               "presigned_default": s3.generate_presigned_url("get_object", Params=params, ExpiresIn=600)}, f)
print(len(captured), "requests captured; boto3", boto3.__version__)
