"""graft: transfer learning for image classification.

Pretrained CNN features (cached, extracted fast with ONNX Runtime), scikit-learn and small PyTorch
heads, honest held-out evaluation, and a self-describing model directory that predicts with
onnxruntime alone.
"""

__version__ = "0.1.0"
