"""The tagging models model-serving runs, shared with training (which may import this package only).

- base.py: the window-model stages (prepare -> forward -> finish) and the reference path
- bert.py, hybrid.py: one module per architecture
- loader.py: manifest "architecture" -> class
- manifest.py: the artifact's manifest and checksums; e5_base.py, onnx_encoder.py,
  windowing.py: the parts the architectures are built from
"""
