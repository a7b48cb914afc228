"""boto3 on what S3 keeps with an object besides its bytes, and on what builds on it: MD5
ETags, headers and user metadata, checksums on request, CopyObject, conditional writes on S3
ETags, versioning (suspended too, with null versions) and ListObjectVersions.

Usage: s3_meta.py ENDPOINT SECRET BUCKET OTHER_BUCKET
Prints "ok NAME" or "FAIL NAME: why" per check; exits 1 if any failed.
"""
import hashlib
import sys
from s3_common import check, client, code_of, done

endpoint, secret, bucket, other = sys.argv[1:5]
s3 = client(endpoint, secret)


def md5_tag(b):
    return '"' + hashlib.md5(b).hexdigest() + '"'


body = b"the quick brown fox"
r = s3.put_object(Bucket=bucket, Key="doc.txt", Body=body, ContentType="text/plain; charset=utf-8",
                  CacheControl="max-age=60", ContentDisposition='attachment; filename="doc.txt"',
                  ContentLanguage="en", Expires="Wed, 21 Oct 2037 07:28:00 GMT",
                  Metadata={"owner": "alice", "project": "x-1"})
check("the PUT's ETag is the body's MD5", r["ETag"] == md5_tag(body), r["ETag"])
h = s3.head_object(Bucket=bucket, Key="doc.txt")
check("HEAD gives the same ETag", h["ETag"] == md5_tag(body), h["ETag"])
check("Content-Type kept", h["ContentType"] == "text/plain; charset=utf-8", h.get("ContentType"))
check("Cache-Control, Content-Disposition, Content-Language kept",
      h.get("CacheControl") == "max-age=60" and h.get("ContentDisposition") == 'attachment; filename="doc.txt"'
      and h.get("ContentLanguage") == "en", h)
check("Expires kept", "2037" in str(h.get("Expires") or h.get("ExpiresString")), h)
check("user metadata kept", h["Metadata"] == {"owner": "alice", "project": "x-1"}, h["Metadata"])
g = s3.get_object(Bucket=bucket, Key="doc.txt")
check("GET gives them too", g["Metadata"]["owner"] == "alice" and g["ContentType"].startswith("text/plain"), g)
# boto3 asks for checksums (and checks them) by default; a client told not to gets none.
plain = client(endpoint, secret, response_checksum_validation="when_required")
g = plain.get_object(Bucket=bucket, Key="doc.txt")
check("no checksum unless asked for", "ChecksumCRC32" not in g, g)
g = s3.get_object(Bucket=bucket, Key="doc.txt", ChecksumMode="ENABLED")
check("the checksum sent with the PUT, when asked for", g.get("ChecksumCRC32") is not None, g)
g = s3.get_object(Bucket=bucket, Key="doc.txt", Range="bytes=0-2", ChecksumMode="ENABLED")
check("but not on a range", "ChecksumCRC32" not in g and g["Body"].read() == b"the", g)
listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
check("listings carry the MD5 ETag", [o["ETag"] for o in listed if o["Key"] == "doc.txt"] == [md5_tag(body)], listed)
check("more than 2 KiB of user metadata: MetadataTooLarge",
      code_of(lambda: s3.put_object(Bucket=bucket, Key="big-meta", Body=b"x", Metadata={"m": "v" * 2100})) == "MetadataTooLarge")

# Conditional writes compare S3's ETags.
check("If-Match with the MD5 ETag writes",
      s3.put_object(Bucket=bucket, Key="doc.txt", Body=body, IfMatch=md5_tag(body), ContentType="text/plain",
                    Metadata={"owner": "alice"})["ETag"] == md5_tag(body))
check("If-Match with another ETag: PreconditionFailed",
      code_of(lambda: s3.put_object(Bucket=bucket, Key="doc.txt", Body=b"z", IfMatch=md5_tag(b"other"))) == "PreconditionFailed")

# CopyObject: the source's attributes by default, the request's with REPLACE.
r = s3.copy_object(Bucket=bucket, Key="copy.txt", CopySource={"Bucket": bucket, "Key": "doc.txt"})
check("copy_object answers the source's ETag", r["CopyObjectResult"]["ETag"] == md5_tag(body), r)
h = s3.head_object(Bucket=bucket, Key="copy.txt")
check("the copy has the source's metadata", h["Metadata"] == {"owner": "alice"} and h["ContentType"] == "text/plain", h)
check("and its bytes", s3.get_object(Bucket=bucket, Key="copy.txt")["Body"].read() == body)
s3.copy_object(Bucket=other, Key="dir/re placed", CopySource={"Bucket": bucket, "Key": "doc.txt"},
               MetadataDirective="REPLACE", ContentType="application/json", Metadata={"fresh": "1"})
h = s3.head_object(Bucket=other, Key="dir/re placed")
check("REPLACE takes the request's metadata, across buckets",
      h["Metadata"] == {"fresh": "1"} and h["ContentType"] == "application/json" and h["ETag"] == md5_tag(body), h)
check("copying onto itself unchanged: InvalidRequest",
      code_of(lambda: s3.copy_object(Bucket=bucket, Key="doc.txt", CopySource={"Bucket": bucket, "Key": "doc.txt"})) == "InvalidRequest")
r = s3.copy_object(Bucket=bucket, Key="doc.txt", CopySource={"Bucket": bucket, "Key": "doc.txt"},
                   MetadataDirective="REPLACE", Metadata={"owner": "bob"})
check("onto itself with REPLACE: a new version", s3.head_object(Bucket=bucket, Key="doc.txt")["Metadata"] == {"owner": "bob"}, r)
check("x-amz-copy-source-if-match with another ETag: PreconditionFailed",
      code_of(lambda: s3.copy_object(Bucket=bucket, Key="c2", CopySource={"Bucket": bucket, "Key": "doc.txt"},
                                     CopySourceIfMatch='"0123"')) == "PreconditionFailed")
check("x-amz-copy-source-if-none-match with its ETag: PreconditionFailed",
      code_of(lambda: s3.copy_object(Bucket=bucket, Key="c2", CopySource={"Bucket": bucket, "Key": "doc.txt"},
                                     CopySourceIfNoneMatch=md5_tag(body))) == "PreconditionFailed")
check("a copy of a missing key: NoSuchKey",
      code_of(lambda: s3.copy_object(Bucket=bucket, Key="c2", CopySource={"Bucket": bucket, "Key": "nothing"})) == "NoSuchKey")
check("nothing was written by the refused copies", code_of(lambda: s3.head_object(Bucket=bucket, Key="c2")) == "404")

# Versioning: Enabled from the start; every version and delete marker listed.
check("versioning is Enabled", s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled")
check("enabling it again is fine",
      s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})["ResponseMetadata"]["HTTPStatusCode"] == 200)
check("a status that is neither: MalformedXML",
      code_of(lambda: s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Off"})) == "MalformedXML")
for i in range(3):
    s3.put_object(Bucket=bucket, Key="v/k", Body=b"v%d" % i)
s3.delete_object(Bucket=bucket, Key="v/k")
s3.put_object(Bucket=bucket, Key="v/other", Body=b"o")
r = s3.list_object_versions(Bucket=bucket, Prefix="v/")
versions = [(v["Key"], v["IsLatest"]) for v in r.get("Versions", [])]
markers = [(m["Key"], m["IsLatest"]) for m in r.get("DeleteMarkers", [])]
check("list_object_versions: every version, and the delete marker as latest",
      versions == [("v/k", False)] * 3 + [("v/other", True)] and markers == [("v/k", True)], r)
etags = [v["ETag"] for v in r["Versions"] if v["Key"] == "v/k"]
check("versions newest first, each with its ETag", etags == [md5_tag(b"v2"), md5_tag(b"v1"), md5_tag(b"v0")], etags)
pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="v/", PaginationConfig={"PageSize": 2})
paged = []
for p in pages:
    paged += [(v["Key"], v["VersionId"]) for v in p.get("Versions", []) + p.get("DeleteMarkers", [])]
check("paged two at a time (markers inside a key), the same five", len(paged) == 5 and len(set(paged)) == 5, paged)
r = s3.list_object_versions(Bucket=bucket, Delimiter="/")
check("a delimiter rolls up prefixes", {p["Prefix"] for p in r.get("CommonPrefixes", [])} == {"v/"}, r)
old = r2 = s3.list_object_versions(Bucket=bucket, Prefix="v/k")["Versions"][-1]["VersionId"]
check("the oldest version reads by its id", s3.get_object(Bucket=bucket, Key="v/k", VersionId=old)["Body"].read() == b"v0")
s3.copy_object(Bucket=bucket, Key="v/k", CopySource={"Bucket": bucket, "Key": "v/k", "VersionId": old})
check("copying an old version over a deleted key restores it",
      s3.get_object(Bucket=bucket, Key="v/k")["Body"].read() == b"v0")
check("a version id that is not a number: InvalidArgument",
      code_of(lambda: s3.list_object_versions(Bucket=bucket, KeyMarker="v/k", VersionIdMarker="abc")) == "InvalidArgument")

# Suspended: each write becomes the key's null version, replacing the previous null one; what
# was written while enabled stays.
first = s3.put_object(Bucket=bucket, Key="s/k", Body=b"kept")["VersionId"]
s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
check("versioning reads Suspended", s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Suspended")
r1 = s3.put_object(Bucket=bucket, Key="s/k", Body=b"null one")
r2 = s3.put_object(Bucket=bucket, Key="s/k", Body=b"null two")
check("a PUT while suspended is the null version", r1.get("VersionId") == "null" and r2.get("VersionId") == "null", (r1, r2))
vs = s3.list_object_versions(Bucket=bucket, Prefix="s/")
ids = [(v["VersionId"], v["IsLatest"], v["ETag"]) for v in vs.get("Versions", [])]
check("one null version (the last write) and the enabled one before it",
      ids == [("null", True, md5_tag(b"null two")), (first, False, md5_tag(b"kept"))], ids)
g = s3.get_object(Bucket=bucket, Key="s/k", VersionId="null")
check("GET versionId=null reads it", g["Body"].read() == b"null two" and g["VersionId"] == "null", g.get("VersionId"))
check("HEAD names it null", s3.head_object(Bucket=bucket, Key="s/k")["VersionId"] == "null")
c = s3.copy_object(Bucket=bucket, Key="s/copy", CopySource={"Bucket": bucket, "Key": "s/k", "VersionId": "null"})
check("a copy from and into a suspended bucket: null on both sides",
      c.get("VersionId") == "null" and c.get("CopySourceVersionId") == "null", c)
d = s3.delete_object(Bucket=bucket, Key="s/k")
check("a DELETE while suspended makes a null delete marker", d.get("DeleteMarker") and d.get("VersionId") == "null", d)
vs = s3.list_object_versions(Bucket=bucket, Prefix="s/k")
check("the marker replaced the null version",
      [v["VersionId"] for v in vs.get("Versions", [])] == [first]
      and [(m["VersionId"], m["IsLatest"]) for m in vs.get("DeleteMarkers", [])] == [("null", True)], vs)
up = s3.create_multipart_upload(Bucket=bucket, Key="s/mp")["UploadId"]
e = s3.upload_part(Bucket=bucket, Key="s/mp", UploadId=up, PartNumber=1, Body=b"part")["ETag"]
m = s3.complete_multipart_upload(Bucket=bucket, Key="s/mp", UploadId=up,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]})
check("a completed multipart upload while suspended is the null version", m.get("VersionId") == "null", m)
# Enabled again: versions are kept once more; the null version stays until deleted by name.
s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
n = s3.put_object(Bucket=bucket, Key="s/copy", Body=b"numbered")["VersionId"]
check("enabled again: a numbered version", n != "null" and n.isdigit(), n)
vs = s3.list_object_versions(Bucket=bucket, Prefix="s/copy", KeyMarker="s/copy", VersionIdMarker="null")
check("version-id-marker=null lists what is older than the null version", vs.get("Versions", []) == [], vs)
vs = s3.list_object_versions(Bucket=bucket, Prefix="s/copy")
check("the null version stays", [v["VersionId"] for v in vs["Versions"]] == [n, "null"], vs)
d = s3.delete_object(Bucket=bucket, Key="s/copy", VersionId="null")
check("DELETE versionId=null removes it", d.get("VersionId") == "null", d)
check("and it is gone", code_of(lambda: s3.get_object(Bucket=bucket, Key="s/copy", VersionId="null")) == "NoSuchVersion")
r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "s/mp", "VersionId": "null"}]})
check("DeleteObjects takes versionId null", [x.get("VersionId") for x in r.get("Deleted", [])] == ["null"], r)
check("a bucket that does not exist has no versioning",
      code_of(lambda: s3.get_bucket_versioning(Bucket="no-such-bucket-here")) == "NoSuchBucket")
done()
