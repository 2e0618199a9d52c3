"""What static int8 (QDQ) quantizes in a graph, and which outputs stay float.

onnxruntime's CPU kernels run int8 only between a QuantizeLinear and a DequantizeLinear: every Q/DQ pair
that its graph optimizer cannot fold into a neighbouring int8 kernel is one more pass over the activation
and one more node for the thread pool to dispatch. On small vision models at batch 1 those passes cost
about what the int8 kernels save (benchmarks/results/vision.md: static int8 was 0.93x / 0.94x of fp32 at
batch 1 before this plan). Two plans, chosen by the task family (Family.static_int8_plan):

- "listed-ops" (text encoders): onnxruntime's default; the listed op types with their inputs and outputs.
- "int8-flow" (vision): quantize so that int8 flows from kernel to kernel, as the profile showed it must:
  * MatMuls whose B is not a weight (attention's QK^T and attention x V) stay float. onnxruntime's
    MatMulConstBOnly option says this but applies to dynamic quantization only, and on ViT these
    products of 17x32 tiles cost more in Q/DQ than they save.
  * MatMul outputs stay float (OpTypesToExcludeOutputQuantization): what reads them (bias Add, LayerNorm,
    Gelu) is float, so a Q/DQ there is pure overhead, while DQ -> MatMul with a float output is fused by
    onnxruntime into one MatMulIntegerToFloat. (Gemm keeps its quantized output: onnxruntime fuses
    DQ -> Gemm -> Q into QGemm but leaves DQ -> Gemm as a float Gemm on dequantized weights.)
  * in a network of convolutions (more Conv than MatMul nodes) the ops between convolutions are
    quantized too (CONV_FLOW_OPS): Conv -> Relu -> Conv otherwise leaves a DequantizeLinear ->
    QuantizeLinear pair at every Relu (the conv's output range differs from the Relu's), and a residual
    Add in float costs two more; with them, onnxruntime runs QLinearConv -> QLinearAdd -> QLinearConv
    and folds each Relu/Clip into the range of the conv before it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError

PLANS = ("listed-ops", "int8-flow")
# ops onnxruntime has int8 kernels (or exact int8 pass-through) for, found between convolutions in CNNs
CONV_FLOW_OPS = ("Relu", "Clip", "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten")
FLOAT_OUTPUT_OPS = ("MatMul",)


@dataclass(frozen=True)
class QdqPlan:
    op_types: tuple[str, ...]
    exclude_nodes: tuple[str, ...] = ()  # float by the plan (activation x activation MatMuls), not by the guard
    float_output_op_types: tuple[str, ...] = ()

    def extra_options(self) -> dict[str, Any]:
        return {"OpTypesToExcludeOutputQuantization": list(self.float_output_op_types)} if self.float_output_op_types else {}

    def describe(self) -> dict[str, Any]:
        """For the lineage: what was quantized and why the rest was not."""
        d = asdict(self)
        d["exclude_nodes"] = len(self.exclude_nodes)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def plan_static(model: Path, plan: str, op_types: tuple[str, ...], conv_flow: bool = True) -> QdqPlan:
    """The plan for the graph at `model`; `op_types` are the compute ops to quantize (Conv/MatMul/Gemm);
    conv_flow=False keeps CONV_FLOW_OPS out (when the user named the op types)."""
    if plan not in PLANS:
        raise ConfigError(f"unknown static int8 plan {plan!r}; valid: {', '.join(PLANS)}")
    if plan == "listed-ops":
        return QdqPlan(tuple(op_types))
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    counts: dict[str, int] = {}
    for n in graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    activation_matmuls = tuple(n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in weights)
    ops = tuple(op_types)
    if conv_flow and "Conv" in ops and counts.get("Conv", 0) > counts.get("MatMul", 0):
        ops += tuple(o for o in CONV_FLOW_OPS if o not in ops)
    return QdqPlan(ops, activation_matmuls, tuple(o for o in FLOAT_OUTPUT_OPS if o in ops))


def shapes_from_quantized(model: Path) -> int:
    """Point every Shape node that reads a DequantizeLinear at the DequantizeLinear's quantized input (the
    same shape) and drop the DequantizeLinears nothing reads any more: the quantizer gives each consumer of a
    quantized tensor a DQ, and ViT's reshapes ask for shapes, so without this every layer paid two full
    dequantizations to learn a shape. Returns how many DequantizeLinear nodes went."""
    import onnx

    m = onnx.load(str(model))
    graph = m.graph
    dq_input = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    shapes = [n for n in graph.node if n.op_type == "Shape" and n.input[0] in dq_input]
    if not shapes:
        return 0
    for n in shapes:
        n.input[0] = dq_input[n.input[0]]
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in read]
    for n in dead:
        graph.node.remove(n)
    onnx.save(m, str(model))
    return len(dead)
