"""boto3 against ostore's S3 API: buckets, and the errors S3 clients switch on.

Usage: s3_buckets.py ENDPOINT SECRET NONEMPTY_BUCKET
Prints one line per check, "ok NAME" or "FAIL NAME: why"; exits 1 if any failed.
NONEMPTY_BUCKET names a bucket the caller created and put a version in (through the native
API), so DeleteBucket must refuse it.
"""
import sys
from botocore.exceptions import ClientError
from s3_common import check, client as s3_client, done

endpoint, secret, nonempty = sys.argv[1], sys.argv[2], sys.argv[3]


def client(key="root", sec=secret):
    return s3_client(endpoint, sec, key=key, signature_version="s3v4")


s3 = client()


def error_of(f):
    try:
        f()
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    return None, 200


s3.create_bucket(Bucket="photos")
names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
check("list_buckets shows the new bucket and default", "photos" in names and "default" in names, str(names))
check("head_bucket", s3.head_bucket(Bucket="photos")["ResponseMetadata"]["HTTPStatusCode"] == 200)
loc = s3.get_bucket_location(Bucket="photos")
check("get_bucket_location is us-east-1 (empty)", loc.get("LocationConstraint") in (None, ""), str(loc))
check("create again: BucketAlreadyOwnedByYou 409",
      error_of(lambda: s3.create_bucket(Bucket="photos")) == ("BucketAlreadyOwnedByYou", 409))
check("head of a missing bucket: 404",
      error_of(lambda: s3.head_bucket(Bucket="nothere"))[1] == 404)
check("delete of a missing bucket: NoSuchBucket 404",
      error_of(lambda: s3.delete_bucket(Bucket="nothere")) == ("NoSuchBucket", 404))
check("delete of a bucket holding a version: BucketNotEmpty 409",
      error_of(lambda: s3.delete_bucket(Bucket=nonempty)) == ("BucketNotEmpty", 409))
check("an invalid bucket name: InvalidBucketName 400",
      error_of(lambda: s3.create_bucket(Bucket="No_Such..Name")) == ("InvalidBucketName", 400))
check("wrong secret: SignatureDoesNotMatch 403",
      error_of(lambda: client(sec="not-the-secret").list_buckets()) == ("SignatureDoesNotMatch", 403))
check("unknown key: InvalidAccessKeyId 403",
      error_of(lambda: client(key="nobody").list_buckets()) == ("InvalidAccessKeyId", 403))
check("wrong secret changed nothing", error_of(lambda: client(sec="x").delete_bucket(Bucket="photos"))[1] == 403
      and s3.head_bucket(Bucket="photos")["ResponseMetadata"]["HTTPStatusCode"] == 200)
code = error_of(lambda: s3.get_bucket_tagging(Bucket="photos"))
check("an operation not served yet says so: NotImplemented 501", code == ("NotImplemented", 501), str(code))
check("delete_bucket: 204", s3.delete_bucket(Bucket="photos")["ResponseMetadata"]["HTTPStatusCode"] == 204)
check("deleted: gone from the list", "photos" not in [b["Name"] for b in s3.list_buckets()["Buckets"]])
done()
