"""Camera adapters: sources of frames that publish on the frame bus. No torch, no onnxruntime."""
