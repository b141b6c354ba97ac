#!/usr/bin/env python3
"""Tiny S3 client for the integration tests (boto3, path-style, plain HTTP).

usage: s3_tool.py mb BUCKET
       s3_tool.py upload SRC_DIR s3://BUCKET/PREFIX/
       s3_tool.py download s3://BUCKET/PREFIX/ DEST_DIR
       s3_tool.py ls s3://BUCKET/PREFIX/

Endpoint from S3_TEST_ENDPOINT, credentials from AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, region from AWS_REGION (default eu-west-1).
Every command prints one JSON object on stdout. Transient failures (the
server is still starting, a volume is not assigned yet) are retried.
"""
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["S3_TEST_ENDPOINT"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=os.environ.get("AWS_REGION", "eu-west-1"),
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 10, "mode": "standard"},
            max_pool_connections=16,
        ),
    )


def retry(fn, what, deadline_s=60.0):
    start = time.monotonic()
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - report the last error
            if time.monotonic() - start > deadline_s:
                raise RuntimeError(f"{what}: {e}") from e
            time.sleep(0.5)


def split_url(url):
    if not url.startswith("s3://"):
        sys.exit(f"not an s3:// url: {url}")
    bucket, _, prefix = url[5:].partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def list_keys(s3, bucket, prefix):
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)


def main():
    cmd, args = sys.argv[1] if len(sys.argv) > 1 else "", sys.argv[2:]
    s3 = client()
    if cmd == "mb" and len(args) == 1:

        def mb():
            try:
                s3.create_bucket(Bucket=args[0])
            except s3.exceptions.BucketAlreadyOwnedByYou:
                pass
            # A write round-trip proves the volume servers are ready too.
            s3.put_object(Bucket=args[0], Key=".probe", Body=b"ok")
            s3.delete_object(Bucket=args[0], Key=".probe")

        retry(mb, f"create bucket {args[0]}")
        print(json.dumps({"bucket": args[0]}))
    elif cmd == "upload" and len(args) == 2:
        src, (bucket, prefix) = args[0], split_url(args[1])
        jobs = []
        for root, _dirs, files in os.walk(src):
            for name in files:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, src).replace(os.sep, "/")
                jobs.append((path, prefix + rel))

        def put(job):
            path, key = job
            with open(path, "rb") as f:
                body = f.read()
            retry(lambda: s3.put_object(Bucket=bucket, Key=key, Body=body), f"put {key}")
            return key

        with ThreadPoolExecutor(8) as pool:
            keys = sorted(pool.map(put, jobs))
        print(json.dumps({"uploaded": len(keys)}))
    elif cmd == "download" and len(args) == 2:
        (bucket, prefix), dest = split_url(args[0]), args[1]
        keys = [k for k in list_keys(s3, bucket, prefix) if not k.endswith("/")]

        def get(key):
            path = os.path.join(dest, *key[len(prefix):].split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            s3.download_file(bucket, key, path)
            return key[len(prefix):]

        with ThreadPoolExecutor(8) as pool:
            rels = list(pool.map(get, keys))
        print(json.dumps({"downloaded": rels}, ensure_ascii=False))
    elif cmd == "ls" and len(args) == 1:
        bucket, prefix = split_url(args[0])
        print(json.dumps({"keys": list_keys(s3, bucket, prefix)}, ensure_ascii=False))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
