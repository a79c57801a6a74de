"""The scoring server (FastAPI + uvicorn). Depends on recsys_mtl's transform and registry only."""
