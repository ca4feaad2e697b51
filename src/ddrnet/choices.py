"""Names that the library and the command line both accept, in a module that imports
nothing: the command line builds its options from them without loading PyTorch, so that
``ddrnet --help`` and a mistyped option answer at once."""

# The CPU runtimes of exported files (``ddrnet.load``): ONNX Runtime, OpenVINO, ncnn,
# ExecuTorch (XNNPACK), AOTInductor.
EXPORTED_RUNTIMES = ("onnxruntime", "openvino", "ncnn", "executorch", "aoti")
# Runtimes of our own file formats: one precision (the exported one), one frame at a time.
OWN_FORMAT_RUNTIMES = ("ncnn", "executorch", "aoti")
# What ``ddrnet predict`` can write of each input (``ddrnet.predict.run_prediction``).
OUTPUT_KINDS = ("labels", "overlay", "side", "confidence")
# The video frames ``ddrnet pick`` scores: every N-th (``ddrnet.pick.pick_frames``' ``every``).
PICK_EVERY = 5
