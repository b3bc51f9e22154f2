"""A one-off profile (2026-12-03, AMD Zen 2; output in output.txt): OpenVINO's per-layer counters (latency
hint, float32 float layers, median of 10 runs after 2) of exported files at 512x1024, summed by layer type, with
the five slowest layers and the kernels OpenVINO chose. The files were written by

    bisenet-pl export --model.pretrained=bisenetv2_camvid --format openvino --precision fp32 --input uint8_nhwc \
        --labels int32 --label_resolution half --output v2_fp32.xml
    bisenet-pl export --model.pretrained=bisenetv2_camvid --format openvino --precision int8 --input uint8_nhwc \
        --labels int32 --label_resolution half --config configs/camvid.yaml --data.root ../shared/camvid \
        --output v2_int8.xml
    python results/speed_zen2/perf_counters.py v2_fp32.xml v2_int8.xml
"""

import collections
import sys

import numpy as np
import openvino as ov

core = ov.Core()
config = {"PERF_COUNT": "YES", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
image = np.random.default_rng(0).integers(0, 255, (1, 512, 1024, 3), dtype=np.uint8)
for path in sys.argv[1:]:
    request = core.compile_model(path, "CPU", config).create_infer_request()
    runs = []
    for i in range(12):
        request.infer({0: image})
        if i >= 2:
            runs.append({p.node_name: (p.real_time.total_seconds() * 1e3, p.node_type, p.exec_type)
                         for p in request.profiling_info})  # fmt: skip
    median = {name: (float(np.median([run[name][0] for run in runs])), *runs[0][name][1:]) for name in runs[0]}
    by_type = collections.defaultdict(float)
    for ms, node_type, _ in median.values():
        by_type[node_type] += ms
    print(path, "sum of medians ms", round(sum(by_type.values()), 1))
    print("  by type:", {k: round(v, 1) for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:6]})
    for name, (ms, node_type, kernel) in sorted(median.items(), key=lambda kv: -kv[1][0])[:5]:
        print(f"  {ms:7.1f} ms {node_type:14s} {kernel:28s} {name[:60]}")
