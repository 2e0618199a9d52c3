"""A request-head deadline for uvicorn's httptools protocol: slow or silent clients cannot hold connections.

uvicorn times out a connection only while it is idle *after* a response, and any byte cancels that timer;
a client that connects and sends nothing, or trickles its headers a byte at a time, holds its connection
(and a slot of --max-connections) for ever, until every new client, health probes included, gets 503.
Here every request head must arrive within `head_timeout_s` of the connection opening (or of the previous
response): otherwise the connection is closed. The body has its own deadline (--body-timeout, in the app).
"""

from __future__ import annotations

from typing import Any


def protocol_with_head_deadline(head_timeout_s: float) -> Any:
    """The httptools protocol class with the deadline, or None when httptools is not installed (uvicorn's default)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class HeadDeadlineProtocol(HttpToolsProtocol):  # type: ignore[misc]
        head_deadline: Any = None

        def _arm_head_deadline(self) -> None:
            self._cancel_head_deadline()
            self.head_deadline = self.loop.call_later(head_timeout_s, self._head_too_slow)

        def _cancel_head_deadline(self) -> None:
            if self.head_deadline is not None:
                self.head_deadline.cancel()
                self.head_deadline = None

        def _head_too_slow(self) -> None:
            self.head_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_deadline()

        def on_headers_complete(self) -> None:
            self._cancel_head_deadline()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_deadline()  # the next request on this keep-alive connection gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_deadline()
            super().connection_lost(exc)

    return HeadDeadlineProtocol
