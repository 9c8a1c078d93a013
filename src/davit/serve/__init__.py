"""``davit serve``: DaViT inference over HTTP (FastAPI + uvicorn), with dynamic batching, limits,
an optional bearer token, Prometheus metrics and structured access logs.

``app.py`` the endpoints, ``model.py`` the model and its runtime, ``batching.py`` the dynamic
batcher, ``inputs.py`` reading images from requests, ``limits.py`` what is refused, ``gate.py`` the
middleware (request ids, token, body size, timeout, access log), ``metrics.py`` Prometheus text,
``server.py`` running it under uvicorn. Needs the ``serve`` extra.
"""
