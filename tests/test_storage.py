"""The embedded server and the store, against a real SeaweedFS."""

import os
import stat

import boto3
import pytest
from botocore.config import Config

from frugalml.core.embedded import EmbeddedS3
from frugalml.core.errors import PreconditionFailed, StorageError


def test_embedded_server_is_private_and_idempotent(s3_server):
    server, info = s3_server
    assert info.endpoint_url.startswith("http://127.0.0.1:")
    mode = stat.S_IMODE(os.stat(server.credentials_file).st_mode)
    assert mode == 0o600
    again = server.up()
    assert again.pid == info.pid  # a healthy server is left alone
    assert server.status()["healthy"] is True


def test_auth_is_enforced(s3_server):
    _, info = s3_server
    bad = boto3.client(
        "s3",
        endpoint_url=info.endpoint_url,
        aws_access_key_id=info.access_key_id,
        aws_secret_access_key="wrong",
        region_name="us-east-1",
        config=Config(signature_version="s3v4", retries={"max_attempts": 1}),
    )
    with pytest.raises(Exception) as e:
        bad.list_objects_v2(Bucket="frugalml")
    assert "403" in str(e.value) or "SignatureDoesNotMatch" in str(e.value) or "AccessDenied" in str(e.value)


def test_put_get_list_roundtrip_with_checksum(store, tmp_path):
    store.put_bytes("a/one.bin", b"hello")
    f = tmp_path / "big.bin"
    f.write_bytes(os.urandom(3 << 20))
    digest = store.put_file("a/two.bin", f)
    assert store.get_bytes("a/one.bin")[0] == b"hello"
    out = store.download("a/two.bin", tmp_path / "out" / "two.bin")
    assert out.read_bytes() == f.read_bytes()
    assert store.head("a/two.bin")["Metadata"]["sha256"] == digest
    assert sorted(o["key"] for o in store.list("a/")) == ["a/one.bin", "a/two.bin"]


def test_corrupt_object_is_detected(store):
    store.client.put_object(
        Bucket=store.bucket, Key=store.key("c.bin"), Body=b"tampered", Metadata={"sha256": "0" * 64}
    )
    with pytest.raises(StorageError, match="checksum mismatch"):
        store.get_bytes("c.bin")


def test_conditional_writes(store):
    etag = store.put_bytes("alias.json", b"v1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("alias.json", b"v2", if_none_match=True)
    new = store.put_bytes("alias.json", b"v2", if_match=etag)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("alias.json", b"v3", if_match=etag)  # stale etag loses
    assert store.get_bytes("alias.json") == (b"v2", new)


def test_unreachable_store_is_a_clear_transient_error(tmp_path):
    from frugalml.core.errors import TransientStorageError
    from frugalml.core.store import S3Settings, Store

    s = Store(S3Settings("frugalml", endpoint_url="http://127.0.0.1:9", access_key_id="x", secret_access_key="y"))
    with pytest.raises(TransientStorageError, match="did not answer"):
        s.get_bytes("nothing")


def test_down_stops_and_up_restarts_with_data(tmp_path):
    server = EmbeddedS3(tmp_path, bucket="frugalml")
    info = server.up()
    s3 = boto3.client(
        "s3",
        endpoint_url=info.endpoint_url,
        aws_access_key_id=info.access_key_id,
        aws_secret_access_key=info.secret_access_key,
        region_name="us-east-1",
    )
    s3.put_object(Bucket="frugalml", Key="keep.txt", Body=b"kept")
    assert server.down() is True
    assert server.status()["running"] is False
    info2 = server.up()
    s3 = boto3.client(
        "s3",
        endpoint_url=info2.endpoint_url,
        aws_access_key_id=info2.access_key_id,
        aws_secret_access_key=info2.secret_access_key,
        region_name="us-east-1",
    )
    assert s3.get_object(Bucket="frugalml", Key="keep.txt")["Body"].read() == b"kept"
    assert info2.access_key_id == info.access_key_id  # the generated key survives restarts
    server.down()
