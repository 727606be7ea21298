"""The gateway: OpenAI-compatible HTTP/WebSocket API in front of the LM and speech workers."""
