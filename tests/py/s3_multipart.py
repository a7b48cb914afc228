"""boto3 on S3 multipart uploads through ostore's S3 API: create, parts (replaced, listed,
paged), complete (S3's ETag, the upload's metadata, every error S3 gives), abort, ranges and
partNumber reads across parts, a copy of an assembled object, and boto3's transfer manager
uploading parts four at a time.

Usage: s3_multipart.py ENDPOINT SECRET BUCKET
Prints "ok NAME" or "FAIL NAME: why" per check; exits 1 if any failed.
"""
import hashlib
import io
import os
import sys
from boto3.s3.transfer import TransferConfig
from s3_common import check, client, code_of, done

endpoint, secret, bucket = sys.argv[1:4]
s3 = client(endpoint, secret)
MIB = 1024 * 1024


def s3_etag(parts):
    return '"%s-%d"' % (hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest(), len(parts))


parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), b"z"]
up = s3.create_multipart_upload(Bucket=bucket, Key="mp/obj", ContentType="video/mp4", Metadata={"take": "3"})
uid = up["UploadId"]
tags = []
for i, p in enumerate(parts, 1):
    r = s3.upload_part(Bucket=bucket, Key="mp/obj", UploadId=uid, PartNumber=i, Body=p)
    tags.append(r["ETag"])
check("each part's ETag is its MD5", tags == ['"%s"' % hashlib.md5(p).hexdigest() for p in parts], tags)
# Part 2 uploaded again replaces the first upload of it.
first2 = parts[1]
parts[1] = os.urandom(5 * MIB)
tags[1] = s3.upload_part(Bucket=bucket, Key="mp/obj", UploadId=uid, PartNumber=2, Body=parts[1])["ETag"]
lp = s3.list_parts(Bucket=bucket, Key="mp/obj", UploadId=uid)
check("list_parts: three parts, the replaced one with its new ETag",
      [(p["PartNumber"], p["ETag"], p["Size"]) for p in lp["Parts"]] == [(1, tags[0], 5 * MIB), (2, tags[1], 5 * MIB), (3, tags[2], 1)], lp["Parts"])
lp = s3.list_parts(Bucket=bucket, Key="mp/obj", UploadId=uid, MaxParts=2)
lp2 = s3.list_parts(Bucket=bucket, Key="mp/obj", UploadId=uid, PartNumberMarker=lp["NextPartNumberMarker"])
check("list_parts pages", lp["IsTruncated"] and [p["PartNumber"] for p in lp2["Parts"]] == [3], (lp, lp2))
ups = s3.list_multipart_uploads(Bucket=bucket)
check("list_multipart_uploads", [(u["Key"], u["UploadId"]) for u in ups.get("Uploads", [])] == [("mp/obj", uid)], ups)
check("the object does not exist before completion", code_of(lambda: s3.head_object(Bucket=bucket, Key="mp/obj")) == "404")


def complete(listed, key="mp/obj", upload=uid):
    return s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": t} for n, t in listed]})


check("a wrong ETag: InvalidPart", code_of(lambda: complete([(1, tags[0]), (2, '"%s"' % hashlib.md5(first2).hexdigest())])) == "InvalidPart")
check("a part never uploaded: InvalidPart", code_of(lambda: complete([(1, tags[0]), (4, tags[2])])) == "InvalidPart")
check("out of order: InvalidPartOrder", code_of(lambda: complete([(2, tags[1]), (1, tags[0])])) == "InvalidPartOrder")
small = s3.create_multipart_upload(Bucket=bucket, Key="mp/small")["UploadId"]
t1 = s3.upload_part(Bucket=bucket, Key="mp/small", UploadId=small, PartNumber=1, Body=b"tiny")["ETag"]
t2 = s3.upload_part(Bucket=bucket, Key="mp/small", UploadId=small, PartNumber=2, Body=b"tail")["ETag"]
check("parts under 5 MiB before the last: EntityTooSmall",
      code_of(lambda: complete([(1, t1), (2, t2)], key="mp/small", upload=small)) == "EntityTooSmall")
r = complete([(1, t1)], key="mp/small", upload=small)
check("one small part completes", s3.get_object(Bucket=bucket, Key="mp/small")["Body"].read() == b"tiny", r)
r = complete(list(zip([1, 2, 3], tags)))
check("complete answers S3's multipart ETag", r["ETag"] == s3_etag(parts), (r["ETag"], s3_etag(parts)))
whole = b"".join(parts)
g = s3.get_object(Bucket=bucket, Key="mp/obj")
check("the assembled object reads back whole", g["Body"].read() == whole and g["ETag"] == s3_etag(parts))
check("with the upload's Content-Type and metadata", g["ContentType"] == "video/mp4" and g["Metadata"] == {"take": "3"}, g)
a, b = 5 * MIB - 10, 10 * MIB + 0
g = s3.get_object(Bucket=bucket, Key="mp/obj", Range="bytes=%d-%d" % (a, b))
check("a range across all three parts", g["Body"].read() == whole[a:b + 1])
g = s3.get_object(Bucket=bucket, Key="mp/obj", PartNumber=2)
check("partNumber=2 reads the second part", g["Body"].read() == parts[1] and g["PartsCount"] == 3
      and g["ContentRange"] == "bytes %d-%d/%d" % (5 * MIB, 10 * MIB - 1, len(whole)), g)
check("partNumber=4: InvalidPartNumber", code_of(lambda: s3.get_object(Bucket=bucket, Key="mp/obj", PartNumber=4)) == "InvalidPartNumber")
check("the completed upload is gone", code_of(lambda: s3.list_parts(Bucket=bucket, Key="mp/obj", UploadId=uid)) == "NoSuchUpload")
check("completing it again: NoSuchUpload", code_of(lambda: complete(list(zip([1, 2, 3], tags)))) == "NoSuchUpload")
listed = [o for o in s3.list_objects_v2(Bucket=bucket, Prefix="mp/")["Contents"] if o["Key"] == "mp/obj"]
check("listings carry the multipart ETag and size", listed and listed[0]["ETag"] == s3_etag(parts) and listed[0]["Size"] == len(whole), listed)
s3.copy_object(Bucket=bucket, Key="mp/copy", CopySource={"Bucket": bucket, "Key": "mp/obj"})
check("a copy of an assembled object", s3.get_object(Bucket=bucket, Key="mp/copy")["Body"].read() == whole)

# Abort: the upload and its parts go; a part for it is refused.
ab = s3.create_multipart_upload(Bucket=bucket, Key="mp/aborted")["UploadId"]
s3.upload_part(Bucket=bucket, Key="mp/aborted", UploadId=ab, PartNumber=1, Body=b"x" * 1000)
check("abort", s3.abort_multipart_upload(Bucket=bucket, Key="mp/aborted", UploadId=ab)["ResponseMetadata"]["HTTPStatusCode"] == 204)
check("a part for an aborted upload: NoSuchUpload",
      code_of(lambda: s3.upload_part(Bucket=bucket, Key="mp/aborted", UploadId=ab, PartNumber=2, Body=b"y")) == "NoSuchUpload")
check("aborting again: NoSuchUpload", code_of(lambda: s3.abort_multipart_upload(Bucket=bucket, Key="mp/aborted", UploadId=ab)) == "NoSuchUpload")
check("an upload id of another key: NoSuchUpload",
      code_of(lambda: s3.list_parts(Bucket=bucket, Key="mp/other", UploadId=small)) == "NoSuchUpload")
check("part number 10001: InvalidArgument",
      code_of(lambda: s3.upload_part(Bucket=bucket, Key="mp/obj", UploadId=ab, PartNumber=10001, Body=b"y")) == "InvalidArgument")

# boto3's transfer manager: 17 MiB in 5 MiB parts, four at once, and back in ranged parts.
body = os.urandom(17 * MIB)
cfg = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=4)
s3.upload_fileobj(io.BytesIO(body), bucket, "mp/transfer", Config=cfg)
h = s3.head_object(Bucket=bucket, Key="mp/transfer")
check("upload_fileobj in four parts", h["ETag"].endswith('-4"') and h["ContentLength"] == len(body), h)
buf = io.BytesIO()
s3.download_fileobj(bucket, "mp/transfer", buf, Config=cfg)
check("download_fileobj reads it back", buf.getvalue() == body)

# UploadPartCopy: parts made from other objects (a range of the assembled one, and all of a
# small one), mixed with an uploaded part.
cp = s3.create_multipart_upload(Bucket=bucket, Key="mp/copied")["UploadId"]
r1 = s3.upload_part_copy(Bucket=bucket, Key="mp/copied", UploadId=cp, PartNumber=1,
                         CopySource={"Bucket": bucket, "Key": "mp/obj"}, CopySourceRange="bytes=1-%d" % (6 * MIB))
check("upload_part_copy of a range across parts: its MD5 ETag",
      r1["CopyPartResult"]["ETag"] == '"%s"' % hashlib.md5(whole[1:6 * MIB + 1]).hexdigest(), r1)
r2 = s3.upload_part(Bucket=bucket, Key="mp/copied", UploadId=cp, PartNumber=2, Body=b"-middle-" * (MIB // 8 * 5))
r3 = s3.upload_part_copy(Bucket=bucket, Key="mp/copied", UploadId=cp, PartNumber=3,
                         CopySource={"Bucket": bucket, "Key": "mp/small"})
check("a source range past its end: InvalidRange",
      code_of(lambda: s3.upload_part_copy(Bucket=bucket, Key="mp/copied", UploadId=cp, PartNumber=4,
                                          CopySource={"Bucket": bucket, "Key": "mp/small"}, CopySourceRange="bytes=0-4")) == "InvalidRange")
check("a copy source condition that fails: PreconditionFailed",
      code_of(lambda: s3.upload_part_copy(Bucket=bucket, Key="mp/copied", UploadId=cp, PartNumber=4,
                                          CopySource={"Bucket": bucket, "Key": "mp/small"}, CopySourceIfMatch='"00"')) == "PreconditionFailed")
complete([(1, r1["CopyPartResult"]["ETag"]), (2, r2["ETag"]), (3, r3["CopyPartResult"]["ETag"])], key="mp/copied", upload=cp)
want = whole[1:6 * MIB + 1] + b"-middle-" * (MIB // 8 * 5) + b"tiny"
check("the object made of copied parts reads back", s3.get_object(Bucket=bucket, Key="mp/copied")["Body"].read() == want)
check("no upload is left", not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"))

# Listing uploads rolled up at a delimiter, paged across prefixes.
ids = {k: s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"]
       for k in ["d/a/1", "d/a/2", "d/b/3", "d/top", "d/z/4"]}
r = s3.list_multipart_uploads(Bucket=bucket, Prefix="d/", Delimiter="/")
check("a delimiter rolls uploads up into common prefixes",
      [u["Key"] for u in r.get("Uploads", [])] == ["d/top"]
      and [p["Prefix"] for p in r.get("CommonPrefixes", [])] == ["d/a/", "d/b/", "d/z/"]
      and r.get("Delimiter") == "/", r)
seen = []
for page in s3.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Prefix="d/", Delimiter="/", PaginationConfig={"PageSize": 2}):
    seen += [u["Key"] for u in page.get("Uploads", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])]
check("paged two at a time, each prefix and upload once", sorted(seen) == ["d/a/", "d/b/", "d/top", "d/z/"], seen)
for k, u in ids.items():
    s3.abort_multipart_upload(Bucket=bucket, Key=k, UploadId=u)
done()
