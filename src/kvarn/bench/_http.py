"""The HTTP client library: ``httpx``, or its API-compatible fork ``httpx2`` (what the offline
vLLM 0.26 GPU bundle ships, through ``openai``), so the bench runs on either host unchanged."""

try:
    import httpx  # noqa: F401
except ImportError:  # pragma: no cover - GPU bundle host
    import httpx2 as httpx  # type: ignore # noqa: F401

__all__ = ["httpx"]
