"""`bllama serve`: an OpenAI-compatible HTTP server over one Runtime (protocol.py reads the requests, server.py
schedules them on the engine thread and answers)."""
