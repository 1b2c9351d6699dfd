"""ZenML pipelines reproducing the paper's tables on top of the ``unimatch`` library.

Importing this package sets the project-local ZenML environment and pins ZenML's source root to the
project (see :mod:`pipelines.zenml_env`) before any pipeline module imports a step; it does not import
zenml itself, so the DVC stage commands (:mod:`pipelines.dvc_stages`) run without it.
"""

from .zenml_env import configure as _configure_zenml

_configure_zenml()
