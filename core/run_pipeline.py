"""The pipeline a stored run ran: its file, with the run's `--set` overrides and its shard.

What acts on a finished run later (`loom release`, the quarantine's actions) must act on the
pipeline the run ran, not on the YAML alone: a run started with `--set load.destination=…` has
its records there, and its quarantine was judged by its own evaluators. `--resume` rebuilds the
pipeline the same way (core.api.prepare_resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.connectors.registry import REDACTED
from core.errors import UsageError
from core.sharding import with_shard_index
from core.spec import LoadedSpec, load_spec


def run_overrides(run: Any) -> list[str]:
    """The run's --set overrides as stored. Raises UsageError (one line) for one that held a
    literal secret: Loom stored it as *** and cannot read it back."""
    overrides = [str(item) for item in (run.options or {}).get("overrides") or []]
    for item in overrides:
        key, _, value = item.partition("=")
        if REDACTED in value:
            raise UsageError(f"run {run.run_id} was started with --set {key.strip()}=… holding "
                             f"a secret, which Loom does not store: put it in a ${{NAME}} "
                             f"placeholder in the pipeline instead")
    return overrides


def run_pipeline(run: Any) -> LoadedSpec:
    """The run's pipeline file as it is now, loaded with the run's overrides and shard. Raises
    LoomError (one line) for a file that no longer loads."""
    loaded = load_spec(Path(run.pipeline_path), run_overrides(run))
    # A shard run loaded into its own `{shard}` destination: so does what acts on it later.
    return with_shard_index(loaded, run.shard_index or 0)
