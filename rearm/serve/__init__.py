"""A saved run as a service and as files.

- `rearm.serve.service.Service`: a loaded, verified, read-only bundle with the queries a service
  answers (recommend, similar items, recommendations for a list of items), exact or through a
  faiss index. No web framework needed.
- `rearm.serve.app.create_app`: the FastAPI application over a Service (`pip install
  'rearm[serve]'`); `rearm serve` runs it under uvicorn.
- `rearm.serve.export`: top-k for every user and the representation tables, written in chunks
  (`rearm export`).

Nothing here imports fastapi, uvicorn, faiss or pyarrow at package import time.
"""
