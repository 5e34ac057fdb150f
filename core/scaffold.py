"""`loom init [FOLDER]`: write a small pipeline to start from, one that `loom validate` passes
and `loom --run` runs offline (provider `replay`, answers in a cassette).

The files are core/starter/ as shipped in the package (tools/write_demo_cassette.py keeps its
cassette in step with its prompt and data). pipeline.yaml gets a first line pointing editors at
the pipeline JSON Schema shipped beside it (core/schema/pipeline.schema.json), resolved to this
installation's absolute path, which is the only form every editor reads.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from core.errors import UsageError

# What is written, relative to FOLDER; the starter's other files (its answers, from which the
# cassette is written) stay in the package.
STARTER_FILES = ("pipeline.yaml", "prompts/route.j2", "data/tickets.csv", "cassettes/demo.jsonl")
SCHEMA_COMMENT = "# yaml-language-server: $schema="


def pipeline_schema() -> Path | None:
    """The shipped pipeline JSON Schema, or None in a Loom that does not ship one."""
    schema = Path(str(resources.files("core") / "schema" / "pipeline.schema.json"))
    return schema if schema.is_file() else None


def scaffold(folder: Path, *, schema: Path | None = None) -> list[Path]:
    """Write the starter into `folder` (created if missing) and return the files written.
    Refuses, writing nothing, when any of them exists: a scaffold never overwrites."""
    targets = [folder / name for name in STARTER_FILES]
    existing = [path for path in targets if path.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more of its files)" if len(existing) > 1 else ""
        raise UsageError(f"loom init: {existing[0]} already exists{more}: nothing written "
                         "(choose another folder, or move them away)")
    schema = schema or pipeline_schema()
    starter = resources.files("core") / "starter"
    for name, target in zip(STARTER_FILES, targets, strict=True):
        text = (starter / name).read_text(encoding="utf-8")
        if name == "pipeline.yaml" and schema is not None:
            text = f"{SCHEMA_COMMENT}{schema.resolve()}\n{text}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # "x": a file that appeared since the check above is not overwritten either.
            with target.open("x", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
        except OSError as exc:
            raise UsageError(f"loom init: cannot write {target}: {exc.strerror or exc}") from None
    return targets
