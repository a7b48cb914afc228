"""What the boto3 checks of tests/tests/s3.rs share: a client for ostore's S3 API, the "ok NAME"
/ "FAIL NAME: why" lines the Rust side counts, and the S3 error code of a failed call."""
import sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

_failed = False


def client(endpoint, secret, key="root", **config):
    """A path-style client with the root key (or `key`), retries off; `config` adds to it."""
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config))


def check(name, ok, why=""):
    global _failed
    print(("ok " if ok else "FAIL ") + name + ("" if ok else ": " + str(why)), flush=True)
    _failed |= not ok


def code_of(f):
    """The S3 error code `f()` fails with (for HEAD, the status), or None if it succeeds."""
    try:
        f()
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


def done():
    sys.exit(1 if _failed else 0)
