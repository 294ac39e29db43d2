"""Webhook signing (the Standard Webhooks test vector), endpoint checks and retry waits."""

from __future__ import annotations

import pytest

from registry_api.subscriptions.dispatcher import backoff_seconds
from registry_api.subscriptions.signing import new_secret, secret_key, sign
from registry_api.subscriptions.urls import RefusedUrl, check_url
from schemas.settings import NotificationTuning


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_generated_secrets_are_whsec_with_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(secret_key(first)) == 32


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.lz-jtj.example/feedgrid",
        "https://10.20.0.5:8443/hook",  # a city intranet address is fine
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://[::1]:9000/",
    ],
)
def test_endpoints_feedgrid_may_call(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://10.20.0.5/hook",  # plain http off loopback
        "https://169.254.169.254/latest/meta-data/",
        "https://169.254.10.1/",
        "https://[fe80::1%25eth0]/",
        "https://[fd00:ec2::254]/",
        "https://100.100.100.200/latest/meta-data",
        "https://[::ffff:169.254.169.254]/",
        "https://metadata.google.internal/",
        "https://0.0.0.0/",
        "https://224.0.0.1/",
        "https://a:b@hooks.example.org/",
        "https://hooks.example.org/#top",
        "https://hooks.example.org:0/",
        "https://hooks.example.org/a b",
        "gopher://hooks.example.org/",
        "https://",
    ],
)
def test_endpoints_feedgrid_refuses(url: str) -> None:
    with pytest.raises(RefusedUrl):
        check_url(url)


def test_retry_waits_double_and_stay_bounded() -> None:
    tuning = NotificationTuning(retry_base_seconds=5, retry_max_seconds=60)
    waits = [backoff_seconds(tuning, attempt) for attempt in range(1, 9)]
    assert 4 <= waits[0] <= 6 and 8 <= waits[1] <= 12 and 16 <= waits[2] <= 24
    assert all(wait <= 72 for wait in waits) and waits[-1] >= 48
