"""Redaction is an allow-list that fails closed: nothing that could be a
credential survives, whatever the URL looks like."""
import pytest

from weightsim.uris import redact, remember, resolve


@pytest.mark.parametrize("uri,safe", [
    ("https://user:pw@host/d/x.npz?X-Amz-Credential=c&X-Amz-Signature=s", "https://host/d/x.npz"),
    ("https://host/x.npz?pwd=s&jwt=s&pass=s&code=s&sig=s&versionId=7", "https://host/x.npz?versionId=7"),
    ("https://host/x.npz#access_token=s", "https://host/x.npz"),
    ("https://host/app;jsessionid=s/x.npz", "https://host/app/x.npz"),
    ("https://host/x.npz?s", "https://host/x.npz"),
    ("https://u:s@[::1]:8080/x.npz", "https://[::1]:8080/x.npz"),
    ("https://u:s@host:99999/x.npz", "https://<redacted>"),  # a port urlsplit cannot read
    ("https://u:s@[host/x.npz", "https://<redacted>"),  # a bracket urlsplit refuses
    ("ht tp://u:s@host/x", "url://<redacted>"),
    ("s3://bucket/key;v=1.npz", "s3://bucket/key;v=1.npz"),  # ; is part of an object key
    ("digits", "digits"),
    ("/data/x.npz", "/data/x.npz"),
])
def test_redaction_keeps_only_what_is_known_safe(uri, safe):
    assert redact(uri) == safe


def test_the_full_uri_stays_in_this_process_only():
    uri = "https://host/secret.npz?token=abc"
    assert remember(uri) == "https://host/secret.npz" and resolve("https://host/secret.npz") == uri


def test_a_new_dataset_run_name_holds_no_credential():
    """The on-new-dataset run is named after ``stem`` of its URI."""
    from weightsim.datasets import stem

    assert stem("https://user:pw@h/x.npz?X-Amz-Credential=abc#access_token=t") == "x"
    assert stem("https://h/datasets/three.npz;jsessionid=abc") == "three"
