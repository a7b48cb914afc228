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
done()
