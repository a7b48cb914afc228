"""boto3 writing through ostore's S3 API with its default settings (a CRC32 checksum on every
PUT), and reading back through S3.

Usage: s3_put.py ENDPOINT SECRET BUCKET
Prints "ok NAME" or "FAIL NAME: why" per check; exits 1 if any failed.
"""
import hashlib
import io
import os
import sys
from s3_common import check, client, code_of, done

endpoint, secret, bucket = sys.argv[1:4]
s3 = client(endpoint, secret)


for size in [0, 1, 5 * 1024 * 1024 + 1]:
    body = os.urandom(size)
    r = s3.put_object(Bucket=bucket, Key=f"put/{size}", Body=body)
    got = s3.get_object(Bucket=bucket, Key=f"put/{size}")["Body"].read()
    check(f"put_object {size} B reads back", got == body and "VersionId" in r, (len(got), r.get("ResponseMetadata", {}).get("HTTPStatusCode")))
check("the CRC32 boto3 sent is returned", "ChecksumCRC32" in s3.put_object(Bucket=bucket, Key="c", Body=b"hello world"))
body = b"y" * 100_000
r = s3.put_object(Bucket=bucket, Key="sha", Body=body, ChecksumAlgorithm="SHA256")
check("a SHA256 checksum", r.get("ChecksumSHA256") is not None)
# (CRC32C needs botocore's optional awscrt; ostore-s3's unit tests cover it.)
check("a wrong checksum is refused: BadDigest",
      code_of(lambda: s3.put_object(Bucket=bucket, Key="bad", Body=b"abc", ChecksumCRC32="AAAAAA==")) == "BadDigest")
check("and nothing was written", code_of(lambda: s3.head_object(Bucket=bucket, Key="bad")) == "404")
check("If-None-Match: * on an existing key: PreconditionFailed",
      code_of(lambda: s3.put_object(Bucket=bucket, Key="c", Body=b"new", IfNoneMatch="*")) == "PreconditionFailed")
check("If-None-Match: * on a new key writes", s3.put_object(Bucket=bucket, Key="fresh", Body=b"1", IfNoneMatch="*")["ResponseMetadata"]["HTTPStatusCode"] == 200)
f = io.BytesIO(os.urandom(3 * 1024 * 1024))
s3.upload_fileobj(f, bucket, "uploaded")
check("upload_fileobj (one PUT below the multipart threshold)", s3.head_object(Bucket=bucket, Key="uploaded")["ContentLength"] == 3 * 1024 * 1024)
import base64
md5 = base64.b64encode(hashlib.md5(b"md5 body").digest()).decode()
check("a right Content-MD5", s3.put_object(Bucket=bucket, Key="md5", Body=b"md5 body", ContentMD5=md5)["ResponseMetadata"]["HTTPStatusCode"] == 200)
check("a wrong Content-MD5: BadDigest",
      code_of(lambda: s3.put_object(Bucket=bucket, Key="md5bad", Body=b"other body", ContentMD5=md5)) == "BadDigest")
v1 = s3.head_object(Bucket=bucket, Key="c")["VersionId"]
v2 = s3.put_object(Bucket=bucket, Key="c", Body=b"second")["VersionId"]
check("an overwrite is a new version; the old one reads by its id",
      v1 != v2 and s3.get_object(Bucket=bucket, Key="c", VersionId=v1)["Body"].read() == b"hello world", (v1, v2))

# Presigned URLs, fetched by a plain HTTP client: boto3's default presigner (SigV2) and SigV4.
import time
import urllib.error
import urllib.request


def fetch(url, method="GET", data=None):
    # urllib would add a form Content-Type to a body; the URL was signed without one (as curl -T
    # sends it).
    headers = {"Content-Type": ""} if data is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, data=data, headers=headers)) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "c"}, ExpiresIn=300)
check("a presigned GET (boto3's default, SigV2)", "Signature=" in url and fetch(url) == (200, b"second"), url)
url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "presigned"}, ExpiresIn=300)
status, _ = fetch(url, "PUT", b"sent by urllib")
check("a presigned PUT (SigV2)", status == 200 and s3.get_object(Bucket=bucket, Key="presigned")["Body"].read() == b"sent by urllib", status)
v4 = client(endpoint, secret, signature_version="s3v4")
url = v4.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "c"}, ExpiresIn=300)
check("a presigned GET (SigV4)", "X-Amz-Signature=" in url and fetch(url) == (200, b"second"), url)
tampered = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "c"}, ExpiresIn=300).replace("/c?", "/presigned?")
status, body = fetch(tampered)
check("a presigned URL for another key: 403 SignatureDoesNotMatch", status == 403 and b"SignatureDoesNotMatch" in body, (status, body))
short = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "c"}, ExpiresIn=1)
time.sleep(2.1)
status, body = fetch(short)
check("an expired presigned URL: 403 AccessDenied", status == 403 and b"AccessDenied" in body, (status, body))
done()
