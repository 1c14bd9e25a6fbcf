"""The docker labels every container, network and volume of a run carries (found and removed by
them, never by name pattern). Their own module so that both the launcher (:mod:`docker`) and the
users' endpoint containers (:mod:`endpoint_containers`) name them without importing each other.
"""

LABEL_RUN = "orbitmesh.run"
LABEL_ROLE = "orbitmesh.role"
LABEL_WORKER = "orbitmesh.worker"
LABEL_RUN_DIR = "orbitmesh.run-dir"
