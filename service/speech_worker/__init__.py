"""The speech worker: speech tokenizer and streaming vocoder behind HTTP and WebSocket routes.

`create_app` builds the FastAPI app (run by `spiritlm-serve speech-worker`); `SpeechClient` is
the gateway's client of it.
"""
