"""Rewrite core/llm/model_capabilities.json from LiteLLM's model data.

LiteLLM keeps the most complete public table of what each model accepts
(`model_prices_and_context_window.json`, shipped inside the `litellm` package). Loom keeps only
the few facts it needs to shape a request, for the two vendors it speaks to directly:

    python tools/refresh_model_capabilities.py                  # from an installed litellm
    python tools/refresh_model_capabilities.py path/to/model_prices_and_context_window.json

Run it when a vendor releases models; a model the file does not know still works: Loom sends
a shape current models accept and adapts once to a 400 that names a parameter.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "core" / "llm" / "model_capabilities.json"
VENDORS = ("openai", "anthropic")


def litellm_data_path() -> Path:
    import litellm  # only this tool needs it

    return Path(litellm.__file__).parent / "model_prices_and_context_window_backup.json"


def capabilities(entry: dict[str, Any]) -> dict[str, bool]:
    vendor = entry["litellm_provider"]
    reasoning = bool(entry.get("supports_reasoning"))
    if vendor == "openai":
        # OpenAI's reasoning models take only the default temperature and top_p.
        sampling = not reasoning
        native_schema = bool(entry.get("supports_response_schema"))
    else:
        sampling = entry.get("supports_sampling_params", True) is not False
        native_schema = bool(entry.get("supports_native_structured_output")
                             or entry.get("supports_output_config"))
    forced_tool = (entry.get("supports_forced_tool_use", True) is not False
                   and entry.get("supports_tool_choice", True) is not False)
    return {"reasoning": reasoning, "sampling": sampling, "native_schema": native_schema,
            "forced_tool": forced_tool, "prompt_caching": bool(entry.get("supports_prompt_caching"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, help="LiteLLM's model JSON (default: the installed litellm's)")
    args = parser.parse_args(argv)
    source = args.source or litellm_data_path()
    data = json.loads(source.read_text(encoding="utf-8"))
    models: dict[str, dict[str, dict[str, bool]]] = {vendor: {} for vendor in VENDORS}
    for name, entry in sorted(data.items()):
        if not isinstance(entry, dict) or entry.get("mode") != "chat":
            continue
        vendor = entry.get("litellm_provider")
        if vendor not in VENDORS:
            continue
        models[vendor][name.split("/", 1)[-1]] = capabilities(entry)
    out = {"source": f"LiteLLM model data ({source.name})", "written": date.today().isoformat(),
           "models": models}
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{OUT}: {sum(len(v) for v in models.values())} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
