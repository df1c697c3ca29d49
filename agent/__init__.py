"""nullops-agent: runs deployment pipelines on one node's Docker engine, behind a TLS WebSocket.

This package never imports `app/`; the control plane imports `agent.protocol` (the contract).
"""
__version__ = "0.1.0"
