"""Where runs are recorded: the SQLite registry (and its schema) and TensorBoard event files."""

from . import schema
from .schema import MIGRATIONS, SCHEMA_VERSION, migrate
from . import registry
from .registry import DEFAULT_PATH, OVERALL, Registry, STATUSES
from . import tb
from .tb import block_of, log_dir, log_eval, log_round

__all__ = ["schema", "MIGRATIONS", "SCHEMA_VERSION", "migrate", "registry", "DEFAULT_PATH", "OVERALL",
           "Registry", "STATUSES", "tb", "block_of", "log_dir", "log_eval", "log_round"]
