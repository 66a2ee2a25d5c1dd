"""int8 versions of the ONNX exports, for ONNX Runtime on the CPU, and the quality gate they must pass to be served.

The scheme is ONNX Runtime's dynamic quantisation (int8 weights per output channel; uint8 activations with one scale
per tensor, computed for each batch as it runs) of every MatMul and fused Attention with constant weights. Alone it
loses too much on a BERT-like model (all-MiniLM-L6-v2 on real documents: mean cosine to fp32 0.993, and 95 % of the
pairs above 0.9 kept), because a few input channels of the feed-forward layers carry activations ten times the
others', often on weight rows as large: one scale per tensor then leaves the other channels a few steps of
resolution. Two rewrites of the fp32 graph fix that, chosen node by node on calibration inputs by simulating the
quantised product and keeping what errs least:

- SmoothQuant (Xiao et al., 2022): input channel j divided by s_j = max|x_j|^alpha / max|w_j|^(1 - alpha) in a Mul
  before the node, and row j of the weight multiplied by it, which moves range from the activations to the weights,
  quantised per channel;
- in a MatMul where one input channel's max|x_j| * max|w_j| is a hundred times the median channel's (the "massive
  activations" of BERT-like models: all-MiniLM-L6-v2's feed-forward down-projections in layers 0-3, up to 800
  times), the few channels that dominate are taken out of the int8 product (their scale set to 0) and computed apart
  in fp32: a Gather of those columns, a MatMul by those weight rows, an Add. Elsewhere that costs more time (some
  10 % when every MatMul does it) than it saves error.

The embedding lookup, the patch-embedding convolution and the products of two activations (CLIP's attention scores)
stay fp32: a lookup gains nothing from int8, and the others are a few per cent of the work.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_MEAN_COSINE = 0.99
MIN_COSINE = 0.97
MIN_PAIR_AGREEMENT = 0.97
PAIR_THRESHOLD = 0.9
MIN_SIMILAR_PAIRS = 50
"""The gate: over real inputs, the mean and the least cosine between an input's int8 and fp32 vectors, and the
agreement on which pairs of inputs are similar: of the pairs that fp32 or int8 puts at a cosine of PAIR_THRESHOLD or
more, the fraction that both put there. With fewer than MIN_SIMILAR_PAIRS such pairs the agreement says nothing, and
the export fails."""

QUANTISED_OPS = ("MatMul", "Attention")
ALPHAS = (None, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""SmoothQuant migration strengths tried per node; None leaves the node's input unscaled."""
SPLIT_CHANNELS = (0, 1, 2, 4, 8, 16)
"""How many dominant input channels a MatMul may compute apart in fp32..."""
SPLIT_DOMINANCE = 100.0
"""... when its top channel's max|x_j| * max|w_j| is at least this many times the median channel's."""
SAMPLED_ROWS = 128
"""Rows of each calibration batch on which a node's error is simulated (its ranges come from every row)."""


@dataclass(frozen=True)
class Quality:
    """How close an int8 export's vectors are to fp32's, on `inputs` real inputs."""

    inputs: int
    mean_cosine: float
    min_cosine: float
    pair_agreement: float
    similar_pairs: int
    """Pairs at or above PAIR_THRESHOLD in fp32 or int8: the agreement's denominator."""

    @property
    def failures(self) -> list[str]:
        """Each gate missed, in words; empty when the export passes."""
        gates = [
            ("mean cosine to fp32", self.mean_cosine, MIN_MEAN_COSINE),
            ("least cosine to fp32", self.min_cosine, MIN_COSINE),
            (f"agreement on the pairs above {PAIR_THRESHOLD}", self.pair_agreement, MIN_PAIR_AGREEMENT),
        ]
        failures = [f"{name} {value:.4f} < {limit}" for name, value, limit in gates if not value >= limit]  # NaN fails
        if self.similar_pairs < MIN_SIMILAR_PAIRS:
            pairs = f"{self.similar_pairs} pairs above {PAIR_THRESHOLD}"
            failures.append(f"{pairs}, too few to judge (< {MIN_SIMILAR_PAIRS})")
        return failures

    @property
    def passed(self) -> bool:
        return not self.failures

    @classmethod
    def from_metadata(cls, metadata: dict) -> Quality:
        """The figures that `as_metadata` stored."""
        return cls(**{name: metadata[name] for name in cls.__dataclass_fields__})

    def as_metadata(self) -> dict:
        return {
            "passed": self.passed,
            "inputs": self.inputs,
            "mean_cosine": round(self.mean_cosine, 5),
            "min_cosine": round(self.min_cosine, 5),
            "pair_agreement": round(self.pair_agreement, 5),
            "similar_pairs": self.similar_pairs,
            "failures": self.failures,
        }


def measure_quality(reference: np.ndarray, candidate: np.ndarray) -> Quality:
    """The gate's figures for L2-normalised vectors of the same inputs, row by row: fp32's and int8's."""
    cosines = np.sum(reference * candidate, axis=1)
    both, either = similar_pairs(reference, candidate, PAIR_THRESHOLD)
    return Quality(
        inputs=len(reference),
        mean_cosine=float(np.mean(cosines)),
        min_cosine=float(np.min(cosines)),
        pair_agreement=both / either if either else 1.0,
        similar_pairs=either,
    )


def similar_pairs(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> tuple[int, int]:
    """Of the pairs of rows at a cosine of `threshold` or more: how many both sets of vectors put there, and how many
    either does."""
    upper = np.triu_indices(len(reference), 1)
    similar_reference = (reference @ reference.T)[upper] >= threshold
    similar_candidate = (candidate @ candidate.T)[upper] >= threshold
    return int(np.sum(similar_reference & similar_candidate)), int(np.sum(similar_reference | similar_candidate))


@dataclass
class NodePlan:
    """How one node is quantised: its input's SmoothQuant strength and the channels computed apart in fp32."""

    node: str
    alpha: float | None
    split: list[int]
    channel_max: np.ndarray
    """max |x_j| of the node's input over the calibration inputs, per channel."""
    error: float
    """Simulated relative squared error of the node's output, with the plan and plainly quantised."""
    plain_error: float

    def scales(self, weight_row_max: np.ndarray) -> np.ndarray:
        if self.alpha is None:
            return np.ones_like(self.channel_max)
        return self.channel_max**self.alpha / weight_row_max ** (1 - self.alpha)


def quantize_model(fp32_file: Path, int8_file: Path, calibration: Sequence[tuple[np.ndarray, ...]]) -> dict:
    """Writes the int8 version of `fp32_file` to `int8_file`, its plan chosen on the input batches of `calibration`
    (each a tuple of the model's inputs, batched as the encoder batches them); what it did, for the metadata."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32_file))
    plans = plan_nodes(model, calibration)
    rewrite(model, plans)
    with tempfile.TemporaryDirectory(prefix="int8-", dir=int8_file.parent) as scratch:
        rewritten = Path(scratch) / "rewritten.onnx"
        onnx.save(model, str(rewritten))
        del model
        quantize_dynamic(
            rewritten,
            int8_file,
            op_types_to_quantize=list(QUANTISED_OPS),
            nodes_to_quantize=[plan.node for plan in plans],
            per_channel=True,
            weight_type=QuantType.QInt8,
            # The fused graph's contrib ops (Attention, SkipLayerNormalization) have no type inference in onnx.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return {
        "quantised_nodes": len(plans),
        "smoothed_nodes": sum(plan.alpha is not None for plan in plans),
        "fp32_channels": sum(len(plan.split) for plan in plans),
    }


def plan_nodes(model, calibration: Sequence[tuple[np.ndarray, ...]]) -> list[NodePlan]:
    """A plan for each MatMul and Attention node with a constant weight, from its inputs on `calibration`."""
    from onnx import numpy_helper

    weights = {init.name: init for init in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in QUANTISED_OPS and n.input[1] in weights]
    batches = capture_inputs(model, sorted({n.input[0] for n in nodes}), calibration)
    plans = []
    for node in nodes:
        weight = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        plans.append(plan_node(node.name, weight, batches[node.input[0]], splittable=node.op_type == "MatMul"))
    return plans


@dataclass
class CapturedInput:
    """One calibration batch of a node's input: the range of every channel over all its rows, and some rows."""

    channel_max: np.ndarray
    channel_min: np.ndarray
    rows: np.ndarray


def capture_inputs(
    model, tensors: list[str], calibration: Sequence[tuple[np.ndarray, ...]]
) -> dict[str, list[CapturedInput]]:
    """`tensors` of the fp32 `model` on each calibration batch."""
    import onnx
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    with tempfile.TemporaryDirectory(prefix="int8-probe-") as scratch:
        file = Path(scratch) / "probe.onnx"  # past 2 GB a model cannot go to the session as bytes
        onnx.save(probe, str(file))
        del probe
        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rng = np.random.default_rng(0)
    captured: dict[str, list[CapturedInput]] = {t: [] for t in tensors}
    for batch in calibration:
        for tensor, value in zip(tensors, session.run(tensors, dict(zip(names, batch, strict=True))), strict=True):
            rows = value.reshape(-1, value.shape[-1])
            sample = rows[rng.choice(len(rows), min(SAMPLED_ROWS, len(rows)), replace=False)]
            captured[tensor].append(CapturedInput(rows.max(axis=0), rows.min(axis=0), sample.copy()))
    return captured


def plan_node(name: str, weight: np.ndarray, batches: list[CapturedInput], splittable: bool) -> NodePlan:
    """The (alpha, split channels) pair whose simulated output error on `batches` is least."""
    channel_max = np.maximum(np.max([np.maximum(b.channel_max, -b.channel_min) for b in batches], axis=0), 1e-6)
    products = channel_max * np.maximum(np.abs(weight).max(axis=1), 1e-6)
    dominant = np.argsort(products)[::-1]
    split = splittable and products[dominant[0]] >= SPLIT_DOMINANCE * np.median(products)
    exact_outputs = [batch.rows @ weight for batch in batches]
    errors = {}
    for count in SPLIT_CHANNELS if split else (0,):
        for alpha in ALPHAS:
            plan = NodePlan(name, alpha, sorted(int(c) for c in dominant[:count]), channel_max, 0.0, 0.0)
            errors[(count, alpha)] = simulated_error(weight, batches, exact_outputs, plan)
    count, alpha = min(errors, key=lambda key: (errors[key], key[0]))
    return NodePlan(
        name,
        alpha,
        sorted(int(c) for c in dominant[:count]),
        channel_max,
        errors[(count, alpha)],
        errors[(0, None)],
    )


def simulated_error(
    weight: np.ndarray, batches: list[CapturedInput], exact_outputs: list[np.ndarray], plan: NodePlan
) -> float:
    """Relative squared error of the node's output under `plan`, computed as ONNX Runtime's dynamic quantisation
    does: DynamicQuantizeLinear (uint8, one scale and zero point per tensor, its range including 0) on the scaled
    input, symmetric int8 per output channel on the scaled weight."""
    inverse, smoothed = smoothing(weight, plan)
    quantised_weight = quantize_per_column(smoothed)
    error = total = 0.0
    for batch, exact in zip(batches, exact_outputs, strict=True):
        high = max(0.0, float(np.max(batch.channel_max * inverse)))
        low = min(0.0, float(np.min(batch.channel_min * inverse)))
        scale = (high - low) / 255 or 1.0
        zero_point = float(np.clip(np.round(-low / scale), 0, 255))
        # Python floats keep the arithmetic in float32 (numpy's float64 scalars would promote the product).
        codes = np.clip(np.round(batch.rows * (inverse / scale)) + zero_point, 0, 255)
        output = ((codes - zero_point) * scale) @ quantised_weight + batch.rows[:, plan.split] @ weight[plan.split]
        error += float(np.sum(np.square(output - exact)))
        total += float(np.sum(np.square(exact)))
    return error / total if total else 0.0


def smoothing(weight: np.ndarray, plan: NodePlan) -> tuple[np.ndarray, np.ndarray]:
    """The factor on each input channel (0 for a channel computed apart) and the weight that goes with it."""
    scales = plan.scales(np.maximum(np.abs(weight).max(axis=1), 1e-6)).astype(np.float32)
    inverse = (1 / scales).astype(np.float32)
    smoothed = weight * scales[:, None]
    inverse[plan.split] = 0
    smoothed[plan.split] = 0
    return inverse, smoothed


def quantize_per_column(weight: np.ndarray) -> np.ndarray:
    scale = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
    scale[scale == 0] = 1
    return np.clip(np.round(weight / scale), -127, 127) * scale


def rewrite(model, plans: list[NodePlan]) -> None:
    """Applies the plans to the fp32 graph (equivalent in fp32): a Mul by the inverse scales before each node whose
    plan scales or splits its input, the weight scaled, and the split channels' Gather, MatMul and Add."""
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in model.graph.initializer}
    by_name = {plan.node: plan for plan in plans}
    for node in list(model.graph.node):
        plan = by_name.get(node.name)
        if plan is None or (plan.alpha is None and not plan.split):
            continue
        weight = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        inverse, smoothed = smoothing(weight, plan)
        weights[node.input[1]].CopyFrom(numpy_helper.from_array(smoothed, node.input[1]))
        source, prefix = node.input[0], node.name + "_int8"
        model.graph.initializer.append(numpy_helper.from_array(inverse, prefix + "_inverse_scale"))
        before = [helper.make_node("Mul", [source, prefix + "_inverse_scale"], [prefix + "_input"], prefix + "_scale")]
        node.input[0] = prefix + "_input"
        after = []
        if plan.split:
            model.graph.initializer.append(numpy_helper.from_array(np.array(plan.split, np.int64), prefix + "_split"))
            model.graph.initializer.append(numpy_helper.from_array(weight[plan.split], prefix + "_split_weight"))
            output, node.output[0] = node.output[0], prefix + "_output"
            before += [
                helper.make_node(
                    "Gather", [source, prefix + "_split"], [prefix + "_split_input"], prefix + "_split_gather", axis=-1
                ),
                helper.make_node(
                    "MatMul", [prefix + "_split_input", prefix + "_split_weight"], [prefix + "_fp32"], prefix + "_split"
                ),
            ]
            after = [helper.make_node("Add", [prefix + "_output", prefix + "_fp32"], [output], prefix + "_sum")]
        position = list(model.graph.node).index(node)
        for offset, new in enumerate([*before, node, *after]):
            if new is not node:
                model.graph.node.insert(position + offset, new)
