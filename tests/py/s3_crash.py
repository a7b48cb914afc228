"""One step of a multipart upload cut by kill -9 (tests/tests/s3.rs drives the server).

Usage: s3_crash.py ENDPOINT SECRET BUCKET KEY STEP [UPLOAD_ID]
  parts     creates an upload and uploads 3 parts (5 MiB, 5 MiB, 1 MiB) made from the key; prints
            "upload ID" once every part was acknowledged
  complete  completes UPLOAD_ID with the parts it lists; prints "completed"
  state     prints "object" if the key reads back as the three parts, "upload N" if UPLOAD_ID is
            still in progress with N parts, "missing" otherwise
"""
import hashlib
import sys
from s3_common import client, code_of

endpoint, secret, bucket, key, step = sys.argv[1:6]
s3 = client(endpoint, secret)
MIB = 1024 * 1024


def part(i):
    size = 5 * MIB if i < 3 else MIB
    seed = hashlib.sha256(("%s/%d" % (key, i)).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


if step == "parts":
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    for i in (1, 2, 3):
        s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=i, Body=part(i))
    print("upload", uid, flush=True)
elif step == "complete":
    uid = sys.argv[6]
    listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=uid)["Parts"]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in listed]})
    print("completed", flush=True)
elif step == "state":
    uid = sys.argv[6]
    if code_of(lambda: s3.head_object(Bucket=bucket, Key=key)) is None:
        got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        print("object" if got == part(1) + part(2) + part(3) else "DIFFERENT")
    elif code_of(lambda: s3.list_parts(Bucket=bucket, Key=key, UploadId=uid)) is None:
        print("upload", len(s3.list_parts(Bucket=bucket, Key=key, UploadId=uid).get("Parts", [])))
    else:
        print("missing")
