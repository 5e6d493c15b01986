"""A local S3 endpoint on 127.0.0.1 for the object-storage tests: moto's server mode.

:func:`s3_endpoint` starts ``moto.server.ThreadedMotoServer`` on a free loopback port and
yields its URL; :func:`s3_environment` gives the environment variables that point the AWS
clients (s3fs/botocore) at it, with made-up credentials.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

#: Made-up credentials; the secret is grepped for in outputs to prove it is never printed.
ACCESS_KEY = "AKIAAGSETLTESTKEY000"
SECRET_KEY = "ags-etl-test-secret-Zq7vN2pLx9"
SESSION_TOKEN = "ags-etl-test-session-token-Hh3kQ8wR"


@contextmanager
def s3_endpoint() -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1 (a free port); yield ``http://127.0.0.1:PORT``."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_environment(endpoint: str) -> dict[str, str]:
    """Variables that send botocore to ``endpoint`` with the test credentials."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
