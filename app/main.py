"""Entry point of ``panel serve app``: one independent Dashboard per browser session."""
import warnings

from app.dashboard import Dashboard
from mglm_core.errors import ApproximationWarning, ConvergenceWarning, DataWarning

# Served, the library's messages reach each user on the page (read from the result, not from warnings);
# printed to the server's log as well they would repeat every user's data and model there. In a notebook
# (``from app import Dashboard``) the warnings are left as they are.
for _category in (ApproximationWarning, ConvergenceWarning, DataWarning):
    warnings.filterwarnings("ignore", category=_category)

Dashboard(query=Dashboard.session_query()).servable(title="mglm dashboard")
