"""Realtime voice conversations over WebSocket (the OpenAI Realtime protocol's core).

protocol.py (events and parser) -> config.py (session settings) -> input_audio.py (input audio
buffer and turn detection, with vad.py) -> conversation.py / prompting.py (history -> prompt) ->
items.py (conversation.item.* events) -> response.py (one model response) -> outbox.py (events
waiting for the socket) -> connection.py (one session's loop) -> serving.py (admission) ->
api_router.py (the route).
"""
