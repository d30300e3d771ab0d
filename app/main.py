"""Entry point of ``panel serve app``: one independent Dashboard per browser session."""
from app.dashboard import Dashboard

Dashboard().servable(title="mglm dashboard")
