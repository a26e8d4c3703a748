"""The model: one streamed Messages API call per turn, retried when the failure is passing.

The SDK's own retries are off (`max_retries=0`) so that every retry, its wait and its limit live
here, in one place: 429, 529 and 5xx answers, timeouts, lost connections, an `error` event in the
middle of a stream, and a stream that ends before `message_delta` (which the SDK would otherwise
hand back as a message with `stop_reason=None`, looking like success).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from backspace.orchestrator.errors import ModelError as ModelError

if TYPE_CHECKING:
    # The SDK takes about a second to import: loaded when the first model is made, so that
    # `backspace serve`, `doctor` and the tests' servers start without it.
    import anthropic

log = logging.getLogger(__name__)

MAX_WAIT = 60.0


@dataclass
class ModelTurn:
    content: list[dict[str, Any]]
    stop_reason: str
    usage: Any
    stop_details: Any = None


class IncompleteStream(Exception):
    """The stream closed before the message was complete (no `message_delta`): a retry signal,
    reported as a ModelError once the retries are spent."""


class StalledStream(Exception):
    """The stream stopped sending in the middle of the message (a read timed out): a retry
    signal, reported as a ModelError once the retries are spent."""


class Model(Protocol):
    name: str

    async def respond(
        self,
        *,
        system: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        max_tokens: int,
    ) -> ModelTurn: ...


class AnthropicModel:
    def __init__(
        self,
        *,
        name: str,
        api_key: str | None,
        base_url: str | None,
        retries: int = 4,
        retry_delay: float = 1.0,
        timeout: float = 300.0,
        tracer_provider: Any = None,
    ) -> None:
        import anthropic

        self.name = name
        self.retries = retries
        self.retry_delay = retry_delay
        self.base_url = base_url or "https://api.anthropic.com"
        # A local Anthropic-compatible server may need no key; the SDK still wants one.
        self.client = anthropic.AsyncAnthropic(
            api_key=api_key or "no-key-needed",
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            # The SDK's own `chat <model>` spans, into backspace's provider (children of the run's
            # agent span), content left out (metadata only: prompts and output may hold
            # secrets); without a provider, off: no spans, no trace headers.
            open_telemetry=(
                {"tracer_provider": tracer_provider, "traces": {"content_mode": "metadata_only"}}
                if tracer_provider is not None
                else False
            ),
        )

    async def close(self) -> None:
        await self.client.close()

    async def respond(
        self,
        *,
        system: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        max_tokens: int,
    ) -> ModelTurn:
        attempt_no = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.retries + 1),
                wait=self._wait,
                retry=retry_if_exception(_retryable),
                reraise=True,
                before_sleep=_log_retry,
            ):
                attempt_no = attempt.retry_state.attempt_number
                with attempt:
                    return await self._once(system, messages, tools, max_tokens)
        except Exception as exc:
            raise self._error(exc, attempt_no) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _once(
        self,
        system: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        max_tokens: int,
    ) -> ModelTurn:
        # The SDK turns transport errors into APITimeoutError/APIConnectionError only until the
        # response starts; one while the stream's body is read comes through as httpx2's own.
        import httpx2  # the SDK's HTTP client: what a broken stream raises while its body is read

        try:
            async with self.client.messages.stream(
                model=self.name,
                max_tokens=max_tokens,
                system=system,  # type: ignore[arg-type]
                messages=messages,  # type: ignore[arg-type]
                tools=tools,  # type: ignore[arg-type]
            ) as stream:
                message = await stream.get_final_message()
        except httpx2.TimeoutException as exc:
            raise StalledStream("it stopped sending in the middle of its answer") from exc
        except httpx2.TransportError as exc:
            raise IncompleteStream(
                "the connection to the model API broke in the middle of its answer "
                f"({type(exc).__name__})"
            ) from exc
        if message.stop_reason is None:
            raise IncompleteStream("the model's response stream ended before it was complete")
        return ModelTurn(
            content=[_block_param(block) for block in message.content],
            stop_reason=message.stop_reason,
            usage=message.usage,
            stop_details=getattr(message, "stop_details", None),
        )

    def _wait(self, state: RetryCallState) -> float:
        """The server's retry-after when it gave one, else exponential backoff with jitter."""
        exc = state.outcome.exception() if state.outcome else None
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or {}
        try:
            if "retry-after-ms" in headers:
                return min(float(headers["retry-after-ms"]) / 1000, MAX_WAIT)
            if "retry-after" in headers:
                return min(float(headers["retry-after"]), MAX_WAIT)
        except ValueError:
            pass
        backoff = self.retry_delay * 2 ** (state.attempt_number - 1)
        return float(min(backoff, MAX_WAIT) * (0.75 + random.random() / 2))

    def _error(self, exc: BaseException, attempts: int) -> ModelError:
        import anthropic

        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        if isinstance(exc, ModelError):
            return exc
        if isinstance(exc, IncompleteStream):
            return ModelError("model_stream_cut", f"{exc}{tries}", True, attempts)
        if isinstance(exc, anthropic.APITimeoutError):
            return ModelError(
                "model_timeout", f"the model API did not answer in time{tries}", True, attempts
            )
        if isinstance(exc, StalledStream):
            return ModelError(
                "model_timeout",
                f"the model API did not answer in time: {exc}{tries}",
                True,
                attempts,
            )
        if isinstance(exc, anthropic.APIConnectionError):
            return ModelError(
                "model_unreachable",
                f"could not reach the model API at {self.base_url}{tries}: check "
                "ANTHROPIC_BASE_URL and the network",
                True,
                attempts,
            )
        if isinstance(exc, anthropic.APIStatusError):
            return _status_error(exc, self.name, tries, attempts)
        return ModelError("model_error", f"the model call failed: {exc}", False, attempts)


def _status_error(
    exc: anthropic.APIStatusError, model: str, tries: str, attempts: int
) -> ModelError:
    detail = getattr(exc, "api_message", None) or getattr(exc, "message", "") or ""
    status = exc.status_code
    if status == 200:
        kind = getattr(exc, "type", None) or "error"
        return ModelError(
            "model_stream_error",
            f"the model's stream failed with {kind}{tries}: {detail}",
            True,
            attempts,
        )
    table: dict[int, tuple[str, str, bool]] = {
        401: ("model_auth", "the model API rejected the key: check ANTHROPIC_API_KEY", False),
        403: ("model_permission", "the key may not use this model: check its permissions", False),
        404: (
            "model_not_found",
            f"the model API does not know {model!r}: check BACKSPACE_MODEL",
            False,
        ),
        413: ("model_request_too_large", "the request to the model was too large", False),
        429: ("model_rate_limited", "the model API is rate limiting this key", True),
        529: ("model_overloaded", "the model API is overloaded", True),
    }
    if status in table:
        code, text, retryable = table[status]
    elif status >= 500:
        code, text, retryable = "model_unavailable", f"the model API failed ({status})", True
    elif "prompt is too long" in detail:
        code, text, retryable = (
            "context_window",
            "the conversation no longer fits the model's context",
            False,
        )
    else:
        code, text, retryable = (
            "model_bad_request",
            f"the model API refused the request ({status})",
            False,
        )
    return ModelError(
        code, f"{text}{tries}: {detail}" if detail else f"{text}{tries}", retryable, attempts
    )


def _retryable(exc: BaseException) -> bool:
    import anthropic

    if isinstance(exc, IncompleteStream | StalledStream | anthropic.APIConnectionError):
        return True
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        return status == 200 or status in (408, 409, 429) or status >= 500
    return False


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("model call failed (attempt %d), retrying: %s", state.attempt_number, exc)


def _block_param(block: Any) -> dict[str, Any]:
    """An SDK content block as a request parameter, for the conversation history."""
    kind = getattr(block, "type", None)
    if kind == "text":
        return {"type": "text", "text": block.text}
    if kind == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    dumped: dict[str, Any] = block.model_dump(exclude_none=True)
    return dumped
