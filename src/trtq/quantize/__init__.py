"""Q/DQ placement by TensorRT's rules and insertion into the ONNX graph."""

from trtq.quantize.placement import Placement, QuantTarget, plan_placement
from trtq.quantize.qdq import insert_qdq

__all__ = ["Placement", "QuantTarget", "insert_qdq", "plan_placement"]
