"""MLflow: tracking setup, the pyfunc forecast model, registration, champion/challenger
promotion and lineage (``tracking``, ``pyfunc``, ``register``, ``manage``; the ``trajfm
registry`` command is ``cli``).

Importing this package does not import MLflow; ``TrajFMPyfunc`` (which subclasses an MLflow
class) is loaded on first access.
"""

from trajfm.registry.manage import CHALLENGER, CHAMPION, RegistryError, promote, rollback
from trajfm.registry.tracking import (
    RegistrationResult,
    champion_info,
    log_and_register,
    setup_mlflow,
    tracking_uri,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "RegistrationResult",
    "RegistryError",
    "TrajFMPyfunc",
    "champion_info",
    "log_and_register",
    "promote",
    "rollback",
    "setup_mlflow",
    "tracking_uri",
]


def __getattr__(name: str):
    if name == "TrajFMPyfunc":
        from trajfm.registry.pyfunc import TrajFMPyfunc

        return TrajFMPyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
