"""boto3 reading and deleting, through ostore's S3 API, objects the caller wrote natively.

Usage: s3_objects.py ENDPOINT SECRET BUCKET BIG_FILE
The bucket holds: small ("hello world"), big (the bytes of BIG_FILE), gone/1 and gone/2.
Prints "ok NAME" or "FAIL NAME: why" per check; exits 1 if any failed.
"""
import io
from boto3.s3.transfer import TransferConfig
import sys
from s3_common import check, client, code_of, done

endpoint, secret, bucket, big_file = sys.argv[1:5]
s3 = client(endpoint, secret)


r = s3.get_object(Bucket=bucket, Key="small")
check("get_object", r["Body"].read() == b"hello world" and r["ContentLength"] == 11, r)
etag = r["ETag"]
check("the ETag is marked as not an MD5", etag.startswith('"') and etag.endswith('-1"'), etag)
r = s3.get_object(Bucket=bucket, Key="small", Range="bytes=6-")
check("a range", r["Body"].read() == b"world" and r["ContentRange"] == "bytes 6-10/11", r)
h = s3.head_object(Bucket=bucket, Key="small")
check("head_object", h["ContentLength"] == 11 and h["ETag"] == etag, h)
check("If-None-Match with the ETag: 304", code_of(lambda: s3.get_object(Bucket=bucket, Key="small", IfNoneMatch=etag)) == "304")
check("If-Match with another ETag: 412", code_of(lambda: s3.get_object(Bucket=bucket, Key="small", IfMatch='"x"')) == "PreconditionFailed")
r = s3.get_object(Bucket=bucket, Key="small", ResponseContentType="text/plain", ResponseContentDisposition="attachment")
check("response-* overrides", r["ContentType"] == "text/plain" and r["ContentDisposition"] == "attachment", r)
check("an unsatisfiable range: InvalidRange", code_of(lambda: s3.get_object(Bucket=bucket, Key="small", Range="bytes=100-")) == "InvalidRange")
check("a missing key: NoSuchKey", code_of(lambda: s3.get_object(Bucket=bucket, Key="nothing")) == "NoSuchKey")
check("head of a missing key: 404", code_of(lambda: s3.head_object(Bucket=bucket, Key="nothing")) == "404")
want = open(big_file, "rb").read()
buf = io.BytesIO()
s3.download_fileobj(bucket, "big", buf, Config=TransferConfig(multipart_threshold=4 << 20, multipart_chunksize=4 << 20, max_concurrency=4))
check("download_fileobj in ranged parts, 4 at once", buf.getvalue() == want, len(buf.getvalue()))
v = s3.get_object(Bucket=bucket, Key="small")["VersionId"]
r = s3.delete_object(Bucket=bucket, Key="small")
check("delete_object leaves a delete marker", r.get("DeleteMarker") is True and r["ResponseMetadata"]["HTTPStatusCode"] == 204, r)
check("deleted: NoSuchKey", code_of(lambda: s3.get_object(Bucket=bucket, Key="small")) == "NoSuchKey")
r = s3.get_object(Bucket=bucket, Key="small", VersionId=v)
check("the old version still reads by its id", r["Body"].read() == b"hello world", r)
check("deleting a missing key is fine", s3.delete_object(Bucket=bucket, Key="never")["ResponseMetadata"]["HTTPStatusCode"] == 204)
r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "gone/1"}, {"Key": "gone/2"}, {"Key": "small", "VersionId": v}, {"Key": "x", "VersionId": "abc"}]})
deleted = sorted(d["Key"] for d in r.get("Deleted", []))
errors = [(e["Key"], e["Code"]) for e in r.get("Errors", [])]
check("delete_objects: deleted and errors", deleted == ["gone/1", "gone/2", "small"] and errors == [("x", "InvalidArgument")], r)
check("delete_objects took the version", code_of(lambda: s3.get_object(Bucket=bucket, Key="small", VersionId=v)) == "NoSuchVersion")
r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "big"}], "Quiet": True})
check("quiet delete_objects lists nothing", not r.get("Deleted") and not r.get("Errors"), r)
check("everything is gone from the listing", s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0)
done()
