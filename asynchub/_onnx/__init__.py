"""The ONNX Model Hub source: manifest parsing and selection, URL templates, warm path, trust,
model parsing and composite models."""

#: onnx.hub's default repo (here, not in urls.py, so the CLI's --help can name it without
#: importing the configuration).
DEFAULT_REPO = "onnx/models:main"
