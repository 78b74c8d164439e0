"""The demo: a generated zoo of real ONNX models and a static mirror serving it on 127.0.0.1."""
