"""One realtime session on one WebSocket: the streaming loop, read top to bottom.

`RealtimeConnection.run` sends ``session.created``, then reads client events one at a time until
the client leaves, goes idle, or the session reaches its maximum duration. Each event is parsed
(protocol.py) and handled here; a bad event gets an ``error`` event and the session goes on.

Three kinds of work run beside the reading loop, so that reading never waits for them:

* the writer task, the only one that sends on the socket (events queue in the outbox,
  outbox.py);
* at most one `Response` (response.py), cancelled by response.cancel or by barge-in;
* encoding of committed user audio on a speech worker (and its transcript when asked for),
  started at commit, or already at a pause that may end the turn (the server VAD reports it
  before `silence_duration_ms` is over; the encoding is kept when the turn ends exactly there);
  a response waits for the encodings its prompt needs.

Conversation items the client creates, deletes or truncates are handled in items.py.

Close codes: 1000 when the client closes or the session is idle, 1008 at the maximum session
duration, 1013 when the gateway is full or draining (serving.py), 1011 on an internal error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Coroutine
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from fastapi import WebSocket
from starlette import status
from starlette.websockets import WebSocketDisconnect, WebSocketState

from service.checkpoints.layout import EXPRESSIVE
from service.errors import SpiritError
from service.gateway.errors import APIError
from service.gateway.realtime.audio_format import item_audio_to_pcm16
from service.gateway.realtime.budget import SessionBudget
from service.gateway.realtime.client_secrets import bound_session
from service.gateway.realtime.config import SessionConfig, initial_config
from service.gateway.realtime.conversation import Conversation, Item, Part
from service.gateway.realtime.idle_timeout import IdleTimeout
from service.gateway.realtime.input_audio import (
    MIN_COMMIT_MS,
    InputAudio,
    PauseDetected,
    TurnDetected,
    Utterance,
)
from service.gateway.realtime.items import ConversationItems
from service.gateway.realtime.outbox import Outbox
from service.gateway.realtime.prompting import PromptBuilder
from service.gateway.realtime.protocol import (
    AudioAppend,
    AudioClear,
    AudioCommit,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    OutputAudioClear,
    ProtocolError,
    ResponseCancel,
    ResponseCreate,
    ResponseIn,
    ServerEvents,
    SessionUpdate,
    TranscriptionSessionUpdate,
    new_id,
    parse_client_event,
)
from service.gateway.realtime.response import Response, ResponseContext, ResponseRequest
from service.gateway.realtime.transcription import (
    TRANSCRIPTION,
    default_transcription,
    intent_type,
    refuse_in_transcription,
    session_event,
    transcribe_input,
)
from service.gateway.realtime.turn_encoder import TurnEncoder, TurnTokens
from service.gateway.realtime.unhonoured import check_response
from service.gateway.realtime.vad import SpeechStarted, VadStream, load_model
from service.gateway.state import GatewayState
from service.gateway.uploads import b64decode_field
from service.gateway.voices import Voice, model_voices
from service.units.tokens import Units
from service.units.windows import WindowPlan

log = logging.getLogger("spiritlm.gateway.realtime")

# WebSocket close codes (RFC 6455), by Starlette's names.
CLOSE_NORMAL = status.WS_1000_NORMAL_CLOSURE
CLOSE_POLICY = status.WS_1008_POLICY_VIOLATION
CLOSE_INTERNAL = status.WS_1011_INTERNAL_ERROR
CLOSE_TRY_AGAIN = status.WS_1013_TRY_AGAIN_LATER
SHUTDOWN_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Limits:
    max_sessions: int
    max_session_seconds: float
    idle_timeout_seconds: float
    max_buffer_seconds: float
    max_message_bytes: int
    context_tokens: int
    # Encoding turns while spoken (turn_encoder.py); window 0 = each turn encoded whole.
    encode_window_seconds: float = 0.0
    encode_left_seconds: float = 0.0
    encode_right_seconds: float = 0.0

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(
            max_sessions=settings.realtime_max_sessions,
            max_session_seconds=settings.realtime_max_session_seconds,
            idle_timeout_seconds=settings.realtime_idle_timeout_seconds,
            max_buffer_seconds=settings.realtime_max_buffer_seconds,
            max_message_bytes=settings.realtime_max_message_bytes,
            context_tokens=settings.realtime_context_tokens,
            encode_window_seconds=settings.realtime_encode_window_seconds,
            encode_left_seconds=settings.realtime_encode_left_seconds,
            encode_right_seconds=settings.realtime_encode_right_seconds,
        )


class RealtimeConnection:
    def __init__(
        self,
        websocket: WebSocket,
        state: GatewayState,
        model: str,
        events: ServerEvents,
        limits: Limits,
    ) -> None:
        self.ws = websocket
        self.state = state
        self.engine = state.engine
        self.model = model
        self.events = events
        self.limits = limits
        self.id = new_id("sess")
        self.voices: list[Voice] = model_voices(self.engine.layout, model)
        self.config: SessionConfig = initial_config(model, self.voices)
        # A client secret's session configuration (client_secrets.py), checked at its creation.
        bound = bound_session(websocket)
        if bound is not None:
            self.config = self.config.updated(bound, self.voices, None)
        self.conversation = Conversation(new_id("conv"))
        self.budget = SessionBudget.from_settings(state.settings)
        self.items = ConversationItems(
            self.conversation, events, self.send, self._start_encoding, self.budget
        )
        self.prompts = PromptBuilder(self.engine, model, limits.context_tokens)
        self.input = InputAudio(
            self.config.input_rate, limits.max_buffer_seconds, fmt=self.config.input_format
        )
        self.turn_encoder = self._new_turn_encoder()
        self.outbox = Outbox(max_bytes=self.budget.max_outbox_bytes)
        self.idle = IdleTimeout()
        self.response: Response | None = None
        self.started = time.monotonic()
        self.last_heard = self.started
        self._pending_item_id: str | None = None
        self._last_turn: tuple[str, float] | None = None  # (trigger, perf_counter) of a commit
        # Encoding started at a pause: ((start_ms, end_ms) of the candidate turn, task).
        self._early: tuple[tuple[int, int], asyncio.Task[TurnTokens]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._appending = False
        self._client_gone = False

    # ---- the loop

    async def run(self) -> None:
        writer = asyncio.create_task(self._write(), name=f"realtime-writer-{self.id}")
        code, reason = CLOSE_NORMAL, ""
        try:
            refused = self._open_as_intended()
            if refused is not None:
                self._error(refused)
                code, reason = CLOSE_POLICY, refused.message[:120]
                return
            problem = await self._start_vad()
            created = session_event(self.events, self.config, "session.created")
            self.send(self.events.event(created, session=self._session()))
            if problem is not None:
                self._error(problem)
            code, reason = await self._read()
        except Exception:
            log.exception("realtime session %s failed", self.id)
            code, reason = CLOSE_INTERNAL, "internal error"
        finally:
            await self._shutdown(writer, code, reason)

    async def _read(self) -> tuple[int, str]:
        while True:
            message = await self._next_message()
            if isinstance(message, tuple):
                return message
            if message["type"] == "websocket.disconnect":
                self._client_gone = True
                return CLOSE_NORMAL, ""
            text = message.get("text")
            if text is None:
                self._error(
                    ProtocolError(
                        "invalid_event",
                        "binary frames are not supported; send JSON events as text frames",
                    )
                )
                continue
            if len(text) > self.limits.max_message_bytes:
                self._error(
                    ProtocolError(
                        "message_too_large",
                        f"the message has {len(text)} bytes; the limit is "
                        f"{self.limits.max_message_bytes} (send audio in smaller appends)",
                    )
                )
                continue
            await self._handle(text)

    async def _next_message(self) -> dict[str, Any] | tuple[int, str]:
        """The next frame, or the close (code, reason) when the session times out."""
        while True:
            if self._client_gone:
                return CLOSE_NORMAL, ""
            now = time.monotonic()
            session_left = self.started + self.limits.max_session_seconds - now
            idle_left = self.last_heard + self.limits.idle_timeout_seconds - now
            if session_left <= 0:
                self._error(
                    ProtocolError(
                        "session_expired",
                        f"the session reached its maximum duration of "
                        f"{self.limits.max_session_seconds:g} s",
                    )
                )
                return CLOSE_POLICY, "maximum session duration reached"
            if idle_left <= 0:
                if self.response is not None and self.response.active:
                    self.last_heard = now  # the model is talking: not idle
                    continue
                return CLOSE_NORMAL, "idle timeout"
            try:
                if self.outbox.full():
                    await asyncio.wait_for(
                        self.outbox.wait_for_room(), min(session_left, idle_left)
                    )
                    continue
                return await asyncio.wait_for(self.ws.receive(), min(session_left, idle_left))
            except asyncio.TimeoutError:
                continue

    async def _handle(self, text: str) -> None:
        event: Any = None
        try:
            event = parse_client_event(text)
            # Only a well-formed event keeps the session from going idle; frames that are not
            # events (binary, oversized, malformed) do not.
            self.last_heard = time.monotonic()
            await self._dispatch(event)
        except ProtocolError as error:
            if error.event_id is None and event is not None:
                error.event_id = event.event_id
            self._error(error)
        except APIError as error:
            self._error(
                ProtocolError(
                    error.code or f"http_{error.status}",
                    error.message,
                    param=error.param,
                    event_id=getattr(event, "event_id", None),
                    kind="invalid_request_error" if error.status < 500 else "server_error",
                )
            )
        except SpiritError as error:
            self._error(
                ProtocolError(
                    "invalid_value", str(error), event_id=getattr(event, "event_id", None)
                )
            )

    async def _dispatch(self, event: Any) -> None:
        if self.config.type == TRANSCRIPTION:
            refuse_in_transcription(event.type)
        if isinstance(event, TranscriptionSessionUpdate):
            event.session.type = TRANSCRIPTION
            await self._update_session(event)
        elif isinstance(event, AudioAppend):
            await self._append(event)
        elif isinstance(event, AudioCommit):
            held = self.input.buffered_samples * 2
            self.budget.check_room(self.conversation, held)  # the buffer stays if refused
            self._commit(self.input.commit_all(), "commit")
        elif isinstance(event, AudioClear):
            self._drop_early_encoding()  # its audio is gone
            self.input.clear()
            self.send(self.events.event("input_audio_buffer.cleared"))
        elif isinstance(event, SessionUpdate):
            await self._update_session(event)
        elif isinstance(event, ItemCreate):
            item_audio_to_pcm16(self.input.format, event)
            self.items.create(event, self.input.rate)
        elif isinstance(event, ItemDelete):
            self.items.delete(event, self._responding_item())
        elif isinstance(event, ItemTruncate):
            self.items.truncate(event, self._responding_item(cancelled_too=False))
        elif isinstance(event, ItemRetrieve):
            self.items.retrieve(event)
        elif isinstance(event, OutputAudioClear):
            self._clear_output_audio()
        elif isinstance(event, ResponseCreate):
            self._create_response(event)
        elif isinstance(event, ResponseCancel):
            self._cancel_requested(event)

    # ---- input audio and turns

    async def _append(self, event: AudioAppend) -> None:
        self.budget.check_append(event.audio, self.input)  # before decoding it
        pcm = b64decode_field(event.audio, "audio")
        if not pcm:
            return
        if not self.input.runs_off_loop:
            self.input.append(pcm)
            self._advance_turn_encoding()
            return
        self._appending = True  # the input buffer changes in a thread: no window cut meanwhile
        try:
            detected = await asyncio.to_thread(self.input.append, pcm)
        finally:
            self._appending = False
        for happened in detected:
            if isinstance(happened, SpeechStarted):
                self._speech_started(happened)
            elif isinstance(happened, TurnDetected):
                self._speech_stopped(happened)
            elif isinstance(happened, PauseDetected):
                self._encode_early(happened.utterance)
        if self._early is not None and not self.input.paused:
            # Speech resumed: the pause did not end the turn, and its candidate's encoding would
            # only take the speech worker from the work of others (a queued one never runs).
            self._drop_early_encoding(speech_resumed=True)
        self._advance_turn_encoding()
        self._check_idle()

    def _check_idle(self) -> None:
        """`turn_detection.idle_timeout_ms`: a long silence asks for a reply (idle_timeout.py)."""
        detection = self.config.turn_detection
        timeout = detection.idle_timeout_ms if detection is not None else None
        busy = self.input.speaking or (self.response is not None and self.response.active)
        stretch = self.idle.observe(self.input.now_ms(), timeout, busy)
        if stretch is None or detection is None:
            return
        item_id = new_id("item")
        self.send(
            self.events.event(
                "input_audio_buffer.timeout_triggered",
                audio_start_ms=stretch[0],
                audio_end_ms=stretch[1],
                item_id=item_id,
            )
        )
        if self.input.buffered_samples * 1000 >= MIN_COMMIT_MS * self.input.rate:
            self._pending_item_id = item_id
            self._commit(self.input.commit_all(), "vad")
        elif detection.create_response and self.config.type != TRANSCRIPTION:
            self._start_response(ResponseIn(), None)

    def _speech_started(self, event: SpeechStarted) -> None:
        self._pending_item_id = new_id("item")
        self.send(
            self.events.event(
                "input_audio_buffer.speech_started",
                audio_start_ms=event.audio_start_ms,
                item_id=self._pending_item_id,
            )
        )
        detection = self.config.turn_detection
        if detection is not None and detection.interrupt_response:
            self._cancel_response("turn_detected")

    def _speech_stopped(self, turn: TurnDetected) -> None:
        item_id = self._pending_item_id or new_id("item")
        self._pending_item_id = item_id
        self.send(
            self.events.event(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=turn.stopped.audio_end_ms,
                item_id=item_id,
            )
        )
        self._commit(turn.utterance, "vad")

    def _responding_item(self, *, cancelled_too: bool = True) -> str | None:
        """The id of the item of the response in progress, if one is; `cancelled_too=False`
        leaves out a cancelled one winding down, which writes nothing more (a barge-in's
        truncate follows the cancel at once)."""
        response = self.response
        if response is None or not response.active:
            return None
        if response.cancel_reason is not None and not cancelled_too:
            return None
        return response.item.id

    def _new_turn_encoder(self) -> TurnEncoder:
        limits = self.limits
        expressive = self.model == EXPRESSIVE
        plan = None
        if limits.encode_window_seconds > 0:
            plan = WindowPlan(
                rate=self.input.rate,
                expressive=expressive,
                window=limits.encode_window_seconds,
                left=limits.encode_left_seconds,
                right=limits.encode_right_seconds,
            )
        return TurnEncoder(
            self.input.rate,
            plan,
            expressive=expressive,
            encode_window=self._encode_window,
            encode_whole=self._encode,
            spawn=self._spawn,
            more_ready=self._advance_turn_encoding,
        )

    def _advance_turn_encoding(self) -> None:
        """Send the growing turn's next window to a speech worker if its audio is here.

        Not while an append runs in its thread (it calls this when it is done), and not during
        a pause that may end the turn: the pause's candidate is being encoded from the windows
        sent before it and a tail (`_encode_early`), so windows sent now would be thrown away
        if the pause ends the turn, and they would take the speech worker from the tails of
        other sessions' turns ending at the same time. The cost: after a hesitation that does
        not end the turn, the windows held back go out when speech resumes (the next append),
        one after the other."""
        if self._appending or self.input.paused:
            return
        turn = self.input.growing_turn()
        if turn is None:
            return
        sent = self.turn_encoder.windows_sent
        self.turn_encoder.advance(turn[0], turn[1], self.input.audio)
        if self.turn_encoder.windows_sent > sent:
            self.state.metrics.realtime_encode_windows.inc()

    async def _encode_window(
        self, wav: bytes, keep_from_ms: int, keep_to_ms: int | None, *, ahead: bool
    ) -> Units:
        result = await self.engine.encode(
            wav,
            self.model,
            keep_ms=(keep_from_ms, keep_to_ms),
            ahead=ahead,
            realtime=self._reply_waits,
        )
        return Units.from_dict(result.units)

    @property
    def _reply_waits(self) -> bool:
        """Whether a spoken reply waits for this session's turns: then the speech worker
        encodes them in its `realtime_encoder_dtype` (docs/realtime.md#encoder-precision). A
        transcription session's text stays what /v1/audio/transcriptions gives for the audio."""
        return self.config.type != TRANSCRIPTION

    def _encode_early(self, utterance: Utterance) -> None:
        """Start encoding at a pause: if the pause ends the turn, the encoding is ready sooner.
        An earlier pause's candidate still here means speech resumed in between."""
        self._drop_early_encoding(speech_resumed=True)
        task = self._spawn(self._turn_tokens(utterance))
        self._early = ((utterance.start_ms, utterance.end_ms), task)

    def _drop_early_encoding(self, *, speech_resumed: bool = False) -> None:
        """Drop a pause's candidate turn, cancelling its encoding if it still runs.
        `speech_resumed`: because the speaker went on (counted)."""
        if self._early is None:
            return
        self._early[1].cancel()
        self._early = None
        if speech_resumed:
            self.state.metrics.realtime_pause_encodes_dropped.inc()

    def _encoding_of(self, utterance: Utterance) -> asyncio.Task[str]:
        ended = time.perf_counter()
        early, self._early = self._early, None
        if early is not None and early[0] == (utterance.start_ms, utterance.end_ms):
            encoding = early[1]
        else:
            if early is not None:
                early[1].cancel()
            encoding = self._spawn(self._turn_tokens(utterance))
        return self._spawn(self._timed_encoding(encoding, ended))

    def _turn_tokens(self, utterance: Utterance) -> Coroutine[Any, Any, TurnTokens]:
        """A turn's speech tokens: from its windows and tail when it was windowed while spoken
        (turn_encoder.py), else encoded whole."""
        return self.turn_encoder.tokens(utterance.first_sample, utterance.pcm16)

    async def _timed_encoding(self, encoding: asyncio.Task[TurnTokens], ended: float) -> str:
        tokens, windows = await encoding
        how = "windows" if windows else "whole"
        wait = time.perf_counter() - ended
        self.state.metrics.realtime_turn_encode_wait.labels(how).observe(wait)
        return tokens

    def _commit(self, utterance: Utterance, trigger: str) -> None:
        ended = time.perf_counter()
        problem = self.budget.room_for(self.conversation, len(utterance.pcm16))
        if problem is not None:  # a turn the VAD ended: reported, and the turn is not kept
            self._drop_early_encoding()
            self._pending_item_id = None
            self._error(problem)
            return
        part = Part("audio", pending_bytes=len(utterance.pcm16))
        part.encoding = self._encoding_of(utterance)
        item = Item(self._pending_item_id or new_id("item"), "user", [part])
        self._pending_item_id = None
        previous = self.conversation.add(item)
        self.send(
            self.events.event(
                "input_audio_buffer.committed", previous_item_id=previous, item_id=item.id
            )
        )
        self.items.announce(item, previous)
        if self.config.transcription is not None:
            seconds = len(utterance.pcm16) / 2 / self.input.rate
            self._spawn(
                transcribe_input(
                    self.send,
                    self.events,
                    self.state.tasks,
                    self.model,
                    item,
                    part,
                    seconds,
                    affinity=self.conversation.id,
                )
            )
        self._last_turn = (trigger, ended)
        detection = self.config.turn_detection
        if trigger != "vad" or detection is None or not detection.create_response:
            return
        if self.config.type == TRANSCRIPTION:  # never a response (transcription.py)
            return
        previous = self.response
        if previous is None or not previous.active:
            self._start_response(ResponseIn(), None)
        elif previous.cancel_reason is not None:
            # Barge-in: the interrupted reply is still winding down; answer once it is done.
            self._spawn(self._respond_after(previous))

    async def _respond_after(self, previous: Response) -> None:
        if previous.task is not None:
            await asyncio.wait({previous.task})
        if self.response is previous:
            self._start_response(ResponseIn(), None)

    def _start_encoding(self, wav: bytes) -> asyncio.Task[str]:
        return self._spawn(self._encode(wav))

    async def _encode(self, wav: bytes) -> str:
        try:
            return (await self.engine.encode(wav, self.model, realtime=self._reply_waits)).tokens
        except APIError as error:
            self._error(ProtocolError("audio_encoding_failed", error.message, kind="server_error"))
            return ""

    # ---- session configuration

    def _check_transcription_model(self, config: SessionConfig, event_id: str | None) -> None:
        """The session's own model transcribes its input: a transcription `model` must name it
        (or an alias of it, e.g. gpt-4o-transcribe); any other name is refused, never ignored."""
        name = (config.transcription or {}).get("model")
        if not name or name == config.model:
            return
        param = "session.audio.input.transcription.model"
        try:
            model = self.state.engine.resolve_model(name)
        except APIError as error:
            raise ProtocolError(
                "model_not_found", error.message, param=param, event_id=event_id
            ) from None
        if model != config.model:
            raise ProtocolError(
                "invalid_value",
                f"input is transcribed by the session's model {config.model}; '{name}' is {model}",
                param=param,
                event_id=event_id,
            )

    async def _update_session(self, event: SessionUpdate | TranscriptionSessionUpdate) -> None:
        old = self.config
        requested = event.session.model
        if requested and requested != old.model:
            # Named as ?model= is (Engine.resolve_model): an alias of this session's model, as
            # OpenAI SDKs send it (gpt-realtime), is no change.
            try:
                same = self.state.engine.resolve_model(requested) == old.model
            except APIError as error:
                raise ProtocolError(
                    "model_not_found", error.message, param="session.model", event_id=event.event_id
                ) from None
            if same:
                event.session.model = old.model
        new = old.updated(event.session, self.voices, event.event_id)
        self._check_transcription_model(new, event.event_id)
        if new.type != old.type and self.response is not None and self.response.active:
            raise ProtocolError(
                "conversation_already_has_active_response",
                f"session.type cannot change while response {self.response.id} is in progress",
                param="session.type",
                event_id=event.event_id,
            )
        reformatted = (new.input_rate, new.input_format) != (old.input_rate, old.input_format)
        if reformatted and self.input.buffered_samples > 0:
            # Its samples are in the old format: converting them is a guess, dropping them
            # silently loses the user's words.
            raise ProtocolError(
                "invalid_value",
                "the input audio format cannot change while the input audio buffer holds audio; "
                "send input_audio_buffer.commit or input_audio_buffer.clear first",
                param="session.audio.input.format",
                event_id=event.event_id,
            )
        if reformatted:
            self.input = InputAudio(
                new.input_rate,
                self.limits.max_buffer_seconds,
                offset_ms=self.input.now_ms(),
                fmt=new.input_format,
            )
            self.turn_encoder = self._new_turn_encoder()
        self.config = new
        problem = None
        if reformatted or new.turn_detection != old.turn_detection:
            problem = await self._start_vad()
        updated = session_event(self.events, new, "session.updated")
        self.send(self.events.event(updated, session=self._session()))
        if problem is not None:
            problem.event_id = event.event_id
            self._error(problem)

    async def _start_vad(self) -> ProtocolError | None:
        """(Re)start turn detection as configured; without the VAD model, fall back to manual."""
        detection = self.config.turn_detection
        if detection is None:
            self.input.set_vad(None)
            return None
        try:
            await asyncio.to_thread(load_model)
        except SpiritError as error:
            self.config = dataclasses.replace(self.config, turn_detection=None)
            self.input.set_vad(None)
            return ProtocolError(
                "server_vad_unavailable",
                f"server VAD is unavailable ({error}); turn_detection is now null: commit "
                "turns with input_audio_buffer.commit",
                param="session.audio.input.turn_detection",
                kind="server_error",
            )
        self.input.set_vad(
            VadStream(detection.vad(), self.input.rate, offset_ms=self.input.now_ms())
        )
        return None

    def _open_as_intended(self) -> ProtocolError | None:
        """``?intent=transcription`` opens a transcription session (transcription.py)."""
        try:
            kind = intent_type(self.ws.query_params.get("intent"))
        except ProtocolError as error:
            return error
        if kind == TRANSCRIPTION:
            transcription = self.config.transcription or default_transcription(self.model)
            self.config = dataclasses.replace(self.config, type=kind, transcription=transcription)
        return None

    def _session(self) -> dict[str, Any]:
        expires = int(time.time() + self.limits.max_session_seconds - self._age())
        return self.config.render(self.events.dialect, self.id, expires)

    def _age(self) -> float:
        return time.monotonic() - self.started

    # ---- responses

    def _create_response(self, event: ResponseCreate) -> None:
        if self.response is not None and self.response.active:
            raise ProtocolError(
                "conversation_already_has_active_response",
                f"response {self.response.id} is still in progress; cancel it or wait for "
                "response.done",
            )
        if event.response.input:
            raise ProtocolError(
                "invalid_value", "response.input is not supported", param="response.input"
            )
        check_response(event.response, self.config)
        self._start_response(event.response, event.event_id)

    def _start_response(self, spec: ResponseIn, event_id: str | None) -> None:
        problem = self.budget.room_for(self.conversation) if spec.conversation != "none" else None
        if problem is not None:  # the reply would be one item too many
            problem.event_id = event_id
            self._error(problem)
            return
        config = self.config
        trigger, ended = self._last_turn or ("create", time.perf_counter())
        self._last_turn = None
        chosen = spec.output_modalities or spec.modalities
        modalities = tuple(sorted(set(chosen))) if chosen else config.output_modalities
        override = spec.max_output_tokens or spec.max_response_output_tokens
        request = ResponseRequest(
            modality=config.modality(modalities),
            modalities=modalities,
            max_tokens=config.max_tokens(self.engine.max_tokens_limit, override),
            temperature=config.temperature if spec.temperature is None else spec.temperature,
            instructions=config.instructions if spec.instructions is None else spec.instructions,
            conversation=spec.conversation != "none",
            metadata=spec.metadata,
            trigger=trigger,
            turn_ended_at=ended,
            event_id=event_id,
        )
        context = ResponseContext(
            engine=self.engine,
            tasks=self.state.tasks,
            model=self.model,
            voice=config.voice,
            speaker=config.speaker,
            output_rate=config.output_rate,
            conversation=self.conversation,
            prompts=self.prompts,
            events=self.events,
            metrics=self.state.metrics,
            send=self.send,
            send_audio=self.outbox.put_audio,
            output_format=config.output_format,
        )
        self.response = Response(context, request)
        self.response.start()

    def _cancel_requested(self, event: ResponseCancel) -> None:
        response = self.response
        if response is None or not response.active:
            raise ProtocolError("response_cancel_not_active", "no response is in progress")
        if event.response_id not in (None, response.id):
            raise ProtocolError(
                "invalid_value",
                f"response '{event.response_id}' is not the one in progress ({response.id})",
                param="response_id",
            )
        self._cancel_response("client_cancelled")

    def _cancel_response(self, reason: str) -> None:
        response = self.response
        if response is None or not response.active:
            return
        self.outbox.drop_audio(response.id)
        response.cancel(reason)

    def _clear_output_audio(self) -> None:
        """output_audio_buffer.clear: the last reply's audio not sent yet is dropped, and a reply
        still in progress is cancelled; its item keeps what was sent (as on barge-in)."""
        response = self.response
        if response is not None:
            self.outbox.drop_audio(response.id)
            self._cancel_response("client_cancelled")
        response_id = response.id if response is not None else None
        self.send(self.events.event("output_audio_buffer.cleared", response_id=response_id))

    # ---- output

    def send(self, event: dict[str, Any] | None) -> None:
        self.outbox.put(event)

    def _error(self, error: ProtocolError) -> None:
        self.send(self.events.error(error))

    async def _write(self) -> None:
        while (outgoing := await self.outbox.get()) is not None:
            try:
                await self.ws.send_text(outgoing.text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                # The reader may be parked on a full outbox that nobody drains any more.
                self._client_gone = True
                self.outbox.close()
                return
            if outgoing.on_sent is not None:
                outgoing.on_sent()

    # ---- helpers and the end

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _shutdown(self, writer: asyncio.Task[None], code: int, reason: str) -> None:
        response = self.response
        if response is not None and response.active and response.task is not None:
            self.outbox.drop_audio(response.id)
            response.cancel("session_closed")
            await asyncio.wait({response.task}, timeout=SHUTDOWN_GRACE_SECONDS)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE_SECONDS)
        self.outbox.close()
        await asyncio.wait({writer}, timeout=SHUTDOWN_GRACE_SECONDS)
        writer.cancel()
        if not self._client_gone and self.ws.application_state == WebSocketState.CONNECTED:
            with suppress(RuntimeError, OSError, WebSocketDisconnect):
                await self.ws.close(code, reason)
        log.info(
            "realtime session %s closed (%d %s) after %.1f s",
            self.id,
            code,
            reason or "client closed",
            self._age(),
        )
