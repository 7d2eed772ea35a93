"""Scope workflows (`.scope-workflow` JSON) checked against this server (`/workflow/resolve`).

A workflow names pipelines (with their source: built in, or a plugin), LoRAs per pipeline, and
optionally a graph of nodes. LiveV2V runs one pipeline per stream and loads neither plugins nor
LoRAs, so the plan says which of the workflow's requirements this server meets.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline import LoraFolder, registry

MAX_ITEMS = 64
NAME = Field(max_length=300)

# Graph node types this server understands (or that only live in Scope's browser app).
GRAPH_NODE_TYPES = {"source", "pipeline", "sink", "note", "record", "lora", "vace", "control",
                    "math", "slider", "knobs", "xypad", "tuple", "reroute", "image", "audio",
                    "midi", "bool", "trigger", "subgraph", "prompt_list", "prompt_blend", "value"}


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class WorkflowLoRA(_Loose):
    filename: str = NAME
    weight: float = 1.0


class WorkflowPipelineSource(_Loose):
    type: Literal["builtin", "pypi", "git", "local"] = "builtin"
    plugin_name: str | None = Field(default=None, max_length=300)
    plugin_version: str | None = Field(default=None, max_length=100)


class WorkflowPipeline(_Loose):
    pipeline_id: str = NAME
    source: WorkflowPipelineSource = Field(default_factory=WorkflowPipelineSource)
    loras: list[WorkflowLoRA] = Field(default_factory=list, max_length=MAX_ITEMS)
    params: dict[str, Any] = Field(default_factory=dict)


class GraphNode(_Loose):
    id: str = NAME
    type: str = NAME
    pipeline_id: str | None = Field(default=None, max_length=300)
    node_type_id: str | None = Field(default=None, max_length=300)


class WorkflowGraph(_Loose):
    nodes: list[GraphNode] = Field(default_factory=list, max_length=4 * MAX_ITEMS)


class Workflow(_Loose):
    """The parts of a Scope workflow that say what it needs; the rest is ignored."""

    pipelines: list[WorkflowPipeline] = Field(default_factory=list, max_length=MAX_ITEMS)
    graph: WorkflowGraph | None = None


class ResolutionItem(BaseModel):
    kind: Literal["pipeline", "plugin", "lora"]
    name: str
    status: Literal["ok", "missing", "version_mismatch"]
    detail: str | None = None
    action: str | None = None
    can_auto_resolve: bool = False


class ResolutionPlan(BaseModel):
    can_apply: bool
    items: list[ResolutionItem]
    warnings: list[str]


def resolve(workflow: Workflow, loras: LoraFolder | None = None) -> ResolutionPlan:
    """One item per pipeline, plugin and LoRA the workflow needs; `can_apply` when every pipeline
    is here and it runs one pipeline (a passthrough in a chain is fine: it changes nothing).
    A LoRA is `ok` when its file is in `loras` and its pipeline loads LoRAs."""
    items: list[ResolutionItem] = []
    warnings: list[str] = []
    available = registry.available()
    wanted: dict[str, WorkflowPipeline | None] = {p.pipeline_id: p for p in workflow.pipelines}
    for node in workflow.graph.nodes if workflow.graph else []:
        if node.type == "pipeline" and node.pipeline_id:
            wanted.setdefault(node.pipeline_id, None)
        elif node.type == "node":
            warnings.append(f"Node {node.id!r} ({node.node_type_id or 'custom node'}) is a Scope "
                            "plugin node; LiveV2V has none, so it will not run.")
        elif node.type == "output":
            warnings.append(f"Output node {node.id!r}: Spout, NDI and Syphon outputs are not "
                            "available on LiveV2V; the stream still plays in the browser.")
        elif node.type not in GRAPH_NODE_TYPES:
            warnings.append(f"Node {node.id!r} has type {node.type!r}, unknown to LiveV2V.")
    for pipeline_id, spec in wanted.items():
        if pipeline_id in available:
            items.append(ResolutionItem(kind="pipeline", name=pipeline_id, status="ok"))
            if spec is not None:
                warnings.extend(_check_params(pipeline_id, spec.params))
        else:
            items.append(ResolutionItem(
                kind="pipeline", name=pipeline_id, status="missing",
                detail=f"LiveV2V has no pipeline {pipeline_id!r} (it has: "
                       f"{', '.join(available)}).",
                action="Pick one of this server's pipelines instead."))
            if spec is not None and spec.source.type != "builtin":
                plugin = spec.source.plugin_name or pipeline_id
                items.append(ResolutionItem(
                    kind="plugin", name=plugin, status="missing",
                    detail="LiveV2V does not install Scope plugins."))
        takes_loras = pipeline_id in available and registry.get(pipeline_id).supports_lora
        for lora in spec.loras if spec is not None else []:
            if not takes_loras:
                items.append(ResolutionItem(
                    kind="lora", name=lora.filename, status="missing",
                    detail=f"LiveV2V's {pipeline_id!r} does not load LoRAs; the workflow runs "
                           "without it."))
            elif loras is not None and loras.find(lora.filename) is not None:
                items.append(ResolutionItem(kind="lora", name=lora.filename, status="ok"))
            else:
                items.append(ResolutionItem(
                    kind="lora", name=lora.filename, status="missing",
                    detail="Not in this server's LoRA folder.",
                    action="Install it from its Hugging Face or CivitAI link (LoRA settings, "
                           "POST /api/v1/loras)."))
    if not wanted:
        warnings.append("The workflow names no pipeline.")
    effective = [p for p in wanted if p != "passthrough"]
    if len(effective) > 1:
        warnings.append(f"LiveV2V runs one pipeline per stream; this workflow chains "
                        f"{len(effective)} ({', '.join(effective)}).")
    pipelines_ok = all(i.status == "ok" for i in items if i.kind == "pipeline")
    return ResolutionPlan(can_apply=bool(wanted) and pipelines_ok and len(effective) <= 1,
                          items=items, warnings=warnings)


def _check_params(pipeline_id: str, params: dict[str, Any]) -> list[str]:
    """Load parameters this server would refuse (unknown keys are fine: they are ignored)."""
    try:
        registry.get(pipeline_id).Params.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors()[:3])
        return [f"Pipeline {pipeline_id!r}: these parameters will be refused ({problems})."]
    return []
