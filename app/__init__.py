"""mglm dashboard: ``panel serve app`` or, in a notebook, ``from app import Dashboard; Dashboard(data=df)``."""
from app.dashboard import Dashboard

__all__ = ["Dashboard"]
