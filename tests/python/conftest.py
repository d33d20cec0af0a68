from __future__ import annotations

import os

import pytest

from palisade_e2e import URL_ENV_EVERYTHING


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def everything_url() -> str:
    """Streamable HTTP endpoint of an @modelcontextprotocol/server-everything (direct or behind Palisade)."""
    url = os.environ.get(URL_ENV_EVERYTHING, "").strip()
    if not url:
        pytest.skip(
            f"{URL_ENV_EVERYTHING} is not set: point it at a server-everything Streamable HTTP "
            "endpoint (e.g. http://127.0.0.1:3001/mcp, or the Palisade route in front of one); "
            "see tests/python/README.md"
        )
    return url
