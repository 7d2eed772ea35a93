"""Scope's `ui` hints: what a pydantic field carries so Scope's Settings panel shows it.

Scope's app renders a property in its Settings panel only when the property carries a `ui`
object: `{category, order, component, modes, is_load_param, label}`. `is_load_param` true means
"a load parameter" (locked while streaming), false "a runtime parameter" (live). A `component`
that is one of Scope's composite controls (`resolution`, `denoising_steps`, `noise`, `cache`,
`vace`, `lora`, `quantization`) is rendered once for all the properties that name it; any other
property gets a widget inferred from its JSON schema (a slider when it has a minimum and a
maximum).

Load parameters carry their hint on the pydantic field (`json_schema_extra=ui(...)`);
`pipeline.schema` adds the runtime parameters' hints for a pipeline class.
"""

from __future__ import annotations

from typing import Any

SLIDER_MAX_SPAN = 1e6
"""Wider numeric ranges (a 63-bit seed) are shown as a number box, not a slider."""


def ui(order: int, label: str, *, component: str | None = None, load: bool = True,
       modes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """`json_schema_extra` for a field Scope's Settings panel should show."""
    hint: dict[str, Any] = {"category": "configuration", "order": order, "label": label,
                            "is_load_param": load}
    if component is not None:
        hint["component"] = component
    if modes is not None:
        hint["modes"] = list(modes)
    return {"ui": hint}


