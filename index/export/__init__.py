"""The torch exporters: the one torch-to-ONNX helper and the text (MiniLM) and image (CLIP) encoder exports."""
