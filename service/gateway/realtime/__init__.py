"""Realtime voice conversations over WebSocket (the OpenAI Realtime protocol's core).

protocol.py (events and parser) -> config.py (session settings) -> session.py (input audio and
turn detection, with vad.py) -> conversation.py / prompting.py (history -> prompt) ->
response.py (one model response) -> serving.py (the session loop) -> api_router.py (the route).
"""
