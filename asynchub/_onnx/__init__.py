"""The ONNX Model Hub source: manifest parsing and selection, URL templates, warm path, trust,
model parsing and composite models."""
