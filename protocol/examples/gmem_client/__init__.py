"""gmemd conformance client written from protocol/PROTOCOL.md alone.

Run the directory: `python3 protocol/examples/gmem_client SOCKET_PATH`
(see __main__.py).
"""
