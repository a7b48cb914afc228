"""boto3's listings against ostore's S3 API, over keys the caller wrote through the native API.

Usage: s3_list.py ENDPOINT SECRET BUCKET
The bucket holds: a.txt, photos/1.jpg, photos/2.jpg, photos/2024/x.jpg, "videos/a b+c.mp4".
Prints "ok NAME" or "FAIL NAME: why" per check; exits 1 if any failed.
"""
import sys
from s3_common import check, client, code_of, done

endpoint, secret, bucket = sys.argv[1:4]
s3 = client(endpoint, secret)


every = ["a.txt", "photos/1.jpg", "photos/2.jpg", "photos/2024/x.jpg", "videos/a b+c.mp4"]
r = s3.list_objects_v2(Bucket=bucket)
keys = [o["Key"] for o in r.get("Contents", [])]
check("v2 lists every key, decoded (encoding-type=url)", keys == every, keys)
check("v2 sizes", [o["Size"] for o in r["Contents"]] == [len(k) for k in every], r["Contents"])
check("v2 ETags are not taken for MD5s", all("-" in o["ETag"] for o in r["Contents"]), r["Contents"])
r = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
check("v2 delimiter at the top", [o["Key"] for o in r.get("Contents", [])] == ["a.txt"]
      and [p["Prefix"] for p in r.get("CommonPrefixes", [])] == ["photos/", "videos/"], r)
r = s3.list_objects_v2(Bucket=bucket, Prefix="photos/", Delimiter="/")
check("v2 delimiter under a prefix", [o["Key"] for o in r.get("Contents", [])] == ["photos/1.jpg", "photos/2.jpg"]
      and [p["Prefix"] for p in r.get("CommonPrefixes", [])] == ["photos/2024/"], r)
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 1})
seen = []
n = 0
for p in pages:
    n += 1
    seen += [o["Key"] for o in p.get("Contents", [])] + [c["Prefix"] for c in p.get("CommonPrefixes", [])]
check("v2 pages of one through continuation tokens", seen == ["a.txt", "photos/", "videos/"] and n == 3, (seen, n))
r = s3.list_objects_v2(Bucket=bucket, StartAfter="photos/2.jpg")
check("v2 start-after", [o["Key"] for o in r.get("Contents", [])] == ["photos/2024/x.jpg", "videos/a b+c.mp4"], r)
r = s3.list_objects_v2(Bucket=bucket, MaxKeys=0)
check("v2 max-keys 0", r["KeyCount"] == 0 and not r["IsTruncated"], r)
seen = []
for p in s3.get_paginator("list_objects").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2}):
    seen += [o["Key"] for o in p.get("Contents", [])]
check("v1 pages through markers", seen == every, seen)
r = s3.list_objects(Bucket=bucket, Prefix="videos/")
check("v1 prefix, with owners", [o["Key"] for o in r["Contents"]] == ["videos/a b+c.mp4"]
      and r["Contents"][0]["Owner"]["ID"] == "root", r)
code = None
try:
    s3.list_objects_v2(Bucket="no-such-bucket")
except Exception as e:
    code = e.response["Error"]["Code"]
check("listing a missing bucket: NoSuchBucket", code == "NoSuchBucket", code)
done()
