"""The approved model in a portable form: ONNX, scored by onnxruntime (DESIGN §8, §12).

The online store keeps each version's model as ONNX, so the service needs nothing but Redis and scores
an application in microseconds (a 100-tree forest: tens of microseconds in onnxruntime against
milliseconds in scikit-learn for one row). The export is the fitted pipeline without SMOTE (a sampler,
which does nothing at prediction): imputation, then the classifier; inputs are one float column per
feature, a null being NaN. Scores agree with scikit-learn's `predict_proba` to about 1e-7 (the trees
compare float32 values in both); training checks the agreement and records it in the card.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import to_onnx, update_registered_converter
from skl2onnx.algebra.onnx_ops import OnnxCast, OnnxIsNaN
from skl2onnx.common.data_types import FloatTensorType
from sklearn.impute import MissingIndicator
from sklearn.pipeline import Pipeline

PROBABILITIES = "probabilities"


def _missing_indicator_shape(operator: Any) -> None:
    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([rows, operator.inputs[0].type.shape[1]])


def _missing_indicator(scope: Any, operator: Any, container: Any) -> None:
    """MissingIndicator(features="all") of NaN: 1.0 where the value is NaN, else 0.0."""
    indicator = operator.raw_operator
    of_nan = isinstance(indicator.missing_values, float) and np.isnan(indicator.missing_values)
    if indicator.features != "all" or not of_nan:
        raise NotImplementedError("only MissingIndicator(features='all') of NaN values is exported")
    version = container.target_opset
    is_nan = OnnxIsNaN(operator.inputs[0], op_version=version)
    cast = OnnxCast(is_nan, to=onnx.TensorProto.FLOAT, op_version=version, output_names=operator.outputs[:1])
    cast.add_to(scope, container)


# scikit-learn-onnx has no converter for MissingIndicator: the one above, for the way the pipeline uses it.
update_registered_converter(MissingIndicator, "CreditMissingIndicator", _missing_indicator_shape, _missing_indicator)


def export(pipeline: Any, features: Sequence[str]) -> bytes:
    """The fitted training pipeline (imputation, SMOTE, classifier) as ONNX bytes, without SMOTE."""
    steps = [(name, step) for name, step in pipeline.steps if name != "smote"]
    model = Pipeline(steps)
    converted = to_onnx(
        model,
        initial_types=[(name, FloatTensorType([None, 1])) for name in features],
        options={id(steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return bytes(converted.SerializeToString())


class PortableModel:
    """An ONNX model of the pipeline: `scores(rows)` gives the probability of the late class per row.

    A model exported with one input per feature (`export`'s form, as the registry and the store keep it)
    is run with one input instead: the feature values as one matrix (`one_input`), imputed by one node
    where the export had a node per column. One row (an application) is scored through buffers bound to
    the session once (`_OneRow`): no array is built for its values or its scores. The scores are the same
    to the bit as the exported model's (the same comparisons of the same float32 values).
    """

    def __init__(self, onnx_bytes: bytes, features: Sequence[str]) -> None:
        options = ort.SessionOptions()
        # One row at a time on a busy server: threads would cost more than they save.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.features = tuple(features)
        self._session = ort.InferenceSession(one_input(onnx_bytes, self.features), options, providers=CPU)
        self._one_row = _OneRow(self._session, len(self.features))

    def scores(self, rows: Sequence[Mapping[str, float | int | None]]) -> list[float]:
        """One score per row of feature values (None: a null feature); none for no row."""
        if not rows:
            return []
        if len(rows) == 1 and (score := self._one_row.score(rows[0], self.features)) is not None:
            return [score]
        nan = np.nan
        matrix = np.array(
            [[nan if (value := row.get(name)) is None else value for name in self.features] for row in rows],
            dtype=np.float32,
        )
        scores: list[float] = self._session.run([PROBABILITIES], {MATRIX: matrix})[0][:, 1].tolist()
        return scores


class _OneRow:
    """One row's values and scores in arrays bound to the session once, so that scoring a row writes its values
    in place and reads its score in place: 15 to 20 us a row where `InferenceSession.run`, which makes an
    array of the values and one of the scores on every call, took 20 to 25 (a 100-tree forest, in-process).

    The buffers serve one caller at a time: `score` gives None when another thread holds them (the caller
    then takes the general path).
    """

    def __init__(self, session: ort.InferenceSession, width: int) -> None:
        self._session = session
        self._values = np.full((1, width), np.nan, dtype=np.float32)
        self._binding = session.io_binding()
        self._binding.bind_cpu_input(MATRIX, self._values)
        # The scores' shape (one row, a column per class) as the model gives it, from a first run.
        shape = session.run([PROBABILITIES], {MATRIX: self._values})[0].shape
        self._scores = np.zeros(shape, dtype=np.float32)
        self._binding.bind_output(PROBABILITIES, "cpu", 0, np.float32, list(shape), self._scores.ctypes.data)
        self._busy = threading.Lock()

    def score(self, row: Mapping[str, float | int | None], features: Sequence[str]) -> float | None:
        if not self._busy.acquire(blocking=False):
            return None
        try:
            values = self._values[0]
            for index, name in enumerate(features):
                value = row.get(name)
                values[index] = np.nan if value is None else value
            self._session.run_with_iobinding(self._binding)
            return float(self._scores[0, 1])
        finally:
            self._busy.release()


CPU = ["CPUExecutionProvider"]
MATRIX = "credit_feature_matrix"  # the one input of `one_input`'s model


def one_input(onnx_bytes: bytes, features: Sequence[str]) -> bytes:
    """The model with one input, `MATRIX` (rows x features, in `features`' order), in place of its one input per
    feature (each a column of floats).

    The export's imputation (a node per column, see `_fuse_imputation`) becomes nodes over the whole matrix:
    10 nodes before the trees became 5, and a row's scoring 4 to 5 us shorter. A graph of another shape
    gets a first node that splits the matrix into the columns, under their names, the rest unchanged.
    """
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    by_name = {i.name: i for i in graph.input}
    if set(by_name) != set(features):
        raise ValueError(f"the ONNX model's inputs {tuple(by_name)} are not the features {tuple(features)}")
    for name in features:
        tensor = by_name[name].type.tensor_type
        dims = tensor.shape.dim
        if tensor.elem_type != onnx.TensorProto.FLOAT or len(dims) != 2 or dims[1].dim_value != 1:
            raise ValueError(f"the ONNX model's input {name} is not a column of floats")
    used = {name for node in graph.node for name in (*node.input, *node.output)} | set(by_name)
    used |= {i.name for i in graph.initializer}
    if any(name.startswith(MATRIX) for name in used):
        raise ValueError(f"the ONNX model already names a value {MATRIX}")
    if not _fuse_imputation(graph, list(features)):
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        split = onnx.helper.make_node("Split", [MATRIX], list(features), axis=1)
        if opset >= 18:  # from opset 18 Split says how many parts; before, as many as its outputs
            split.attribute.append(onnx.helper.make_attribute("num_outputs", len(features)))
        graph.node.insert(0, split)
    del graph.input[:]
    graph.input.append(onnx.helper.make_tensor_value_info(MATRIX, onnx.TensorProto.FLOAT, [None, len(features)]))
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _fuse_imputation(graph: onnx.GraphProto, features: list[str]) -> bool:
    """Replace the export's imputation by nodes over `MATRIX`, in place; False (the graph untouched) when the
    graph is not of that shape.

    The export's shape: each feature input read only by an `Imputer` of NaN with one value, and/or by an
    `IsNaN` then a `Cast` to float (a missing indicator); all their results read only by one `Concat` of
    columns, which is all that reads them. In its place: one `Imputer` of the matrix with a value per
    column (NaN, which leaves a column as it is, for a feature without one), one `IsNaN` and `Cast` of the
    matrix when there are indicators, their `Concat`, and a `Gather` of the columns in the old order.
    The values compared downstream are the same float32 values, so the scores are the same to the bit.
    """
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    if outputs & set(features):
        return False
    column: dict[str, int] = {}  # a result read by the Concat -> its column in Concat(imputed, indicators)
    imputed: dict[int, float] = {}
    replaced: list[onnx.NodeProto] = []
    for index, feature in enumerate(features):
        for node in readers.get(feature, []):
            if _is_column_imputer(node) and index not in imputed:
                imputed[index] = next(a.floats[0] for a in node.attribute if a.name == "imputed_value_floats")
                column[node.output[0]] = index
                replaced.append(node)
            elif node.op_type == "IsNaN" and _is_float_cast(cast := readers.get(node.output[0], [])):
                if node.output[0] in outputs:
                    return False
                column[cast[0].output[0]] = len(features) + index
                replaced += [node, cast[0]]
            else:
                return False
    concat = {node.output[0]: node for name in column for node in readers.get(name, [])}
    if len(concat) != 1:
        return False
    (joined,) = concat.values()
    axis = _attribute(joined, "axis")
    if joined.op_type != "Concat" or axis is None or axis.i not in (1, -1) or any(name in outputs for name in column):
        return False
    if set(joined.input) != set(column) or len(joined.input) != len(column):
        return False
    order = [column[name] for name in joined.input]
    nodes = [
        onnx.helper.make_node("Imputer", [MATRIX], [f"{MATRIX}_imputed"], domain="ai.onnx.ml",
                              imputed_value_floats=[imputed.get(i, float("nan")) for i in range(len(features))],
                              replaced_value_float=float("nan")),
    ]  # fmt: skip
    last, width = f"{MATRIX}_imputed", len(features)
    if any(index >= len(features) for index in order):
        nodes += [
            onnx.helper.make_node("IsNaN", [MATRIX], [f"{MATRIX}_nan"]),
            onnx.helper.make_node("Cast", [f"{MATRIX}_nan"], [f"{MATRIX}_missing"], to=onnx.TensorProto.FLOAT),
            onnx.helper.make_node("Concat", [last, f"{MATRIX}_missing"], [f"{MATRIX}_columns"], axis=1),
        ]
        last, width = f"{MATRIX}_columns", 2 * len(features)
    if order == list(range(width)):
        nodes[-1].output[0] = joined.output[0]  # the columns in the old order already
    else:
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(order, dtype=np.int64), f"{MATRIX}_order"))
        nodes.append(onnx.helper.make_node("Gather", [last, f"{MATRIX}_order"], [joined.output[0]], axis=1))
    gone = {node.output[0] for node in (*replaced, joined)}  # a value is made by one node
    kept = [node for node in graph.node if not (node.output and node.output[0] in gone)]
    del graph.node[:]
    graph.node.extend(nodes + kept)
    # Shapes of the values no longer made (the Concat's result is still made, by the last new node).
    known = [info for info in graph.value_info if info.name not in gone - {joined.output[0]}]
    del graph.value_info[:]
    graph.value_info.extend(known)
    return True


def _attribute(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def _is_column_imputer(node: onnx.NodeProto) -> bool:
    """An Imputer of NaN in one column of floats, by one value."""
    values = _attribute(node, "imputed_value_floats")
    replaced = _attribute(node, "replaced_value_float")
    return (
        node.op_type == "Imputer"
        and node.domain == "ai.onnx.ml"
        and len(node.input) == 1
        and values is not None
        and len(values.floats) == 1
        and replaced is not None
        and bool(np.isnan(replaced.f))
        and {a.name for a in node.attribute} <= {"imputed_value_floats", "replaced_value_float"}
    )


def _is_float_cast(readers: list[onnx.NodeProto]) -> bool:
    """Whether a value's readers are one Cast to float."""
    if len(readers) != 1 or readers[0].op_type != "Cast":
        return False
    to = _attribute(readers[0], "to")
    return to is not None and to.i == onnx.TensorProto.FLOAT
