"""The controller: ingest, fleet state, API, dashboard, metrics (FastAPI + SQLModel).

Nothing here is imported by the agent; a kiosk does not pay for this stack.
"""
