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
# ``ddrnet pick``'s defaults (``ddrnet.pick.pick_frames``): frames to pick, every N-th video
# frame scored, and the least distance between two picks (frames of a video, images of a
# folder in name order: consecutive frames of a drive teach the labeller little new).
PICK_COUNT, PICK_EVERY, PICK_GAP = 50, 5, 30
# How ``ddrnet search`` proposes candidates (``ddrnet.engine.search.search``): Optuna's TPE
# (near the best so far) or every candidate of the space in turn.
SEARCH_SAMPLERS = ("tpe", "grid")
# ``ddrnet bench``'s protocol (``ddrnet.deploy.run_benchmarks``' defaults): the paper's
# 1024x2048 input, timed seconds per backend split into round-robin passes, warm-up seconds.
BENCH_SIZE, BENCH_SECONDS, BENCH_ROUNDS, BENCH_WARMUP_SECONDS = (1024, 2048), 6.0, 3, 2.0
# ``ddrnet serve``'s defaults (``ddrnet.serve``): the address; the upload and image caps
# (4096 x 2048 pixels: twice a Cityscapes frame; larger inputs need gigabytes of activations
# on a CPU, and clients should resize first); worker threads, and the seconds without a byte
# after which a connection is closed.
SERVE_HOST, SERVE_PORT = "127.0.0.1", 8000
SERVE_MAX_UPLOAD_MB, SERVE_MAX_PIXELS = 10.0, 4096 * 2048
SERVE_THREADS, SERVE_TIMEOUT_S = 4, 30
# What ``ddrnet bench`` can time (``ddrnet.deploy.backends.build_runner``), with what each is.
BACKENDS: dict[str, str] = {
    "eager": "PyTorch eager, float32, NCHW",
    "eager_channels_last": "PyTorch eager, float32, channels-last (NHWC) memory format",
    "eager_bf16": "PyTorch eager, bfloat16 autocast, NCHW",
    "eager_bf16_channels_last": "PyTorch eager, bfloat16 autocast, channels-last",
    "bn_folded": "PyTorch eager, float32, Conv+BN folded (the paper's speed protocol)",
    "compile": "torch.compile (inductor), float32, BN folded",
    "ort": "ONNX Runtime CPU, float32, all graph optimisations",
    "ort_int8": "ONNX Runtime CPU, INT8 QDQ (u8 activations, per-channel s8 weights)",
    "openvino": "OpenVINO CPU, float32 inference precision",
    "openvino_bf16": "OpenVINO CPU, bfloat16 inference precision where the CPU supports it",
    "openvino_int8": "OpenVINO CPU running our INT8 QDQ model (AMX/VNNI int8), bf16 elsewhere",
    "ncnn": "ncnn CPU (pnnx export), float32, Winograd 3x3 and packed layouts (its defaults)",
    "executorch": "ExecuTorch CPU, XNNPACK delegate, float32, fixed input size",
    "executorch_int8": "ExecuTorch CPU, XNNPACK delegate, INT8 PT2E (per-channel s8 weights)",
    "aoti": "AOTInductor package (torch.export, compiled ahead of time), float32, AVX2 kernels",
    "cuda": "PyTorch on the GPU, float32 (no TF32), BN folded, cudnn.benchmark",
    "cuda_fp16": "PyTorch on the GPU, float16 weights and input, channels-last, BN folded",
    "tensorrt_fp16": "TensorRT engine from our ONNX export, float16 allowed, static shape",
}
GPU_BACKENDS = ("cuda", "cuda_fp16", "tensorrt_fp16")
