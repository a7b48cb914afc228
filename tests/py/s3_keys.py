"""boto3 with access keys besides root: one limited to a bucket, one read-only, and one revoked.

Usage: s3_keys.py ENDPOINT ROOT_SECRET STEP ...
  scoped APP_KEY APP_SECRET READER_KEY READER_SECRET
             the limited key works in its bucket (allowed) and nowhere else (other); the
             read-only key reads everywhere and writes nowhere; every refusal is AccessDenied
             and writes nothing
  revoked KEY SECRET
             the revoked key is refused: InvalidAccessKeyId
Prints "ok NAME" or "FAIL NAME: why" per check; exits 1 if any failed.
"""
import sys
import urllib.request
from s3_common import check, client, code_of, done

endpoint, root_secret, step = sys.argv[1:4]
root = client(endpoint, root_secret)

if step == "scoped":
    app_key, app_secret, reader_key, reader_secret = sys.argv[4:8]
    app = client(endpoint, app_secret, key=app_key)
    reader = client(endpoint, reader_secret, key=reader_key)
    app.put_object(Bucket="allowed", Key="k", Body=b"from app")
    check("the limited key writes and reads its bucket", app.get_object(Bucket="allowed", Key="k")["Body"].read() == b"from app")
    names = [b["Name"] for b in app.list_buckets()["Buckets"]]
    check("it lists only its bucket", names == ["allowed"], names)
    check("a PUT in another bucket: AccessDenied", code_of(lambda: app.put_object(Bucket="other", Key="k", Body=b"x")) == "AccessDenied")
    check("and nothing was written", code_of(lambda: root.head_object(Bucket="other", Key="k")) == "404")
    root.put_object(Bucket="other", Key="secret", Body=b"root's")
    check("a GET in another bucket: AccessDenied", code_of(lambda: app.get_object(Bucket="other", Key="secret")) == "AccessDenied")
    check("a listing of another bucket: AccessDenied", code_of(lambda: app.list_objects_v2(Bucket="other")) == "AccessDenied")
    check("a copy out of another bucket: AccessDenied",
          code_of(lambda: app.copy_object(Bucket="allowed", Key="stolen", CopySource={"Bucket": "other", "Key": "secret"})) == "AccessDenied")
    check("and nothing was copied", code_of(lambda: root.head_object(Bucket="allowed", Key="stolen")) == "404")
    check("creating a bucket: AccessDenied", code_of(lambda: app.create_bucket(Bucket="made-by-app")) == "AccessDenied")
    check("deleting its bucket: AccessDenied", code_of(lambda: app.delete_bucket(Bucket="allowed")) == "AccessDenied")
    check("multipart in another bucket: AccessDenied", code_of(lambda: app.create_multipart_upload(Bucket="other", Key="m")) == "AccessDenied")
    url = app.generate_presigned_url("get_object", Params={"Bucket": "allowed", "Key": "k"}, ExpiresIn=60)
    check("a URL it presigned for its bucket works", urllib.request.urlopen(url).read() == b"from app")
    wrong = client(endpoint, app_secret[:-1] + ("A" if app_secret[-1] != "A" else "B"), key=app_key)
    check("its id with a wrong secret: SignatureDoesNotMatch", code_of(lambda: wrong.list_buckets()) == "SignatureDoesNotMatch")
    check("the root secret does not sign for it", code_of(lambda: client(endpoint, root_secret, key=app_key).list_buckets()) == "SignatureDoesNotMatch")
    check("the read-only key reads anywhere", reader.get_object(Bucket="other", Key="secret")["Body"].read() == b"root's")
    check("and lists every bucket", {b["Name"] for b in reader.list_buckets()["Buckets"]} >= {"allowed", "other"})
    check("a PUT with the read-only key: AccessDenied", code_of(lambda: reader.put_object(Bucket="allowed", Key="r", Body=b"x")) == "AccessDenied")
    check("a DELETE with it: AccessDenied", code_of(lambda: reader.delete_object(Bucket="other", Key="secret")) == "AccessDenied")
    check("the object is still there", root.get_object(Bucket="other", Key="secret")["Body"].read() == b"root's")
elif step == "revoked":
    key, secret = sys.argv[4:6]
    gone = client(endpoint, secret, key=key)
    check("a revoked key: InvalidAccessKeyId", code_of(lambda: gone.list_objects_v2(Bucket="allowed")) == "InvalidAccessKeyId")
done()
