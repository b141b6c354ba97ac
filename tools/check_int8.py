#!/usr/bin/env python3
"""Compare the int8 model built by tools/quantize_int8.py with the fp32 model.

    python tools/check_int8.py [--int8 models/mobilenet_v2_1.0_224_int8.onnx]
                               [--fp32 ../shared/models/mobilenet_v2_1.0_224_features.onnx]
                               [--images '../shared/datasets/fruits360-sample/Test/**/*.jpg']
                               [--limit 480] [--threads 2] [--batch 32] [--repeats 5]
                               [--tflite ../shared/models/mobilenet_v2_1.0_224_quant.tflite]

Runs both models with ONNX Runtime (CPU, --threads intra-op threads, batch --batch) on
real images preprocessed as verger does (RGB, bilinear resize to 224x224, x = p/127.5 - 1,
NCHW) and prints:
  * feature cosine int8 vs fp32 (mean, worst), logits top-1 agreement;
  * model-only throughput of both (images/s, best of --repeats, fp32 and int8 runs
    alternating in the same process) and the ratio;
  * the int8 kernels ONNX Runtime actually runs (op counts of the optimized graph);
  * each int8 convolution alone on random full-range inputs against the exact result
    (catches the int16 saturation of the u8s8 kernels on x86 without VNNI);
  * if ai-edge-litert (or tflite-runtime) is importable: the TFLite model itself
    (its MobilenetV2/Logits/AvgPool tensor) against both.
Exits 1 if the feature targets (cosine mean >= 0.99, worst >= 0.97) are missed or a
convolution saturates.
Needs onnxruntime, numpy and pillow (the project's .venv has them) and onnx
(tools/requirements.txt).
"""

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO_ROOT), "shared")
DEFAULT_INT8 = os.path.join(REPO_ROOT, "models", "mobilenet_v2_1.0_224_int8.onnx")
DEFAULT_FP32 = os.path.join(SHARED, "models", "mobilenet_v2_1.0_224_features.onnx")
DEFAULT_TFLITE = os.path.join(SHARED, "models", "mobilenet_v2_1.0_224_quant.tflite")
DEFAULT_IMAGES = os.path.join(SHARED, "datasets", "fruits360-sample", "Test", "**", "*.jpg")


def load_images(pattern, limit):
    from PIL import Image

    paths = sorted(glob.glob(pattern, recursive=True))
    if limit:
        paths = paths[:limit]
    if not paths:
        sys.exit(f"check_int8: no images match {pattern}")
    x = np.empty((len(paths), 3, 224, 224), np.float32)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("RGB").resize((224, 224), Image.BILINEAR)
            x[i] = (np.asarray(im, np.float32) / 127.5 - 1.0).transpose(2, 0, 1)
    return paths, x


def session(path, threads, spinning, optimized_path=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3  # not the warning about saving an NCHWc-optimised graph
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def run_all(sess, x, batch):
    feats, logits = [], []
    for i in range(0, len(x), batch):
        f, lg = sess.run(["features", "logits"], {"input": x[i:i + batch]})
        feats.append(f)
        logits.append(lg)
    return np.concatenate(feats), np.concatenate(logits)


def cosine(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-30)


def op_counts(path):
    import onnx

    m = onnx.load(path, load_external_data=False)
    return collections.Counter(
        (n.domain + "." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in m.graph.node)


def saturation_check(path, seed=0):
    """Every int8 convolution of a QDQ model on its own, fed random full-range uint8 inputs:
    ONNX Runtime's int8 kernels (graph fused) against the unfused QDQ graph computed in
    float. A difference of 1 is a rounding tie; more means int16 saturation (or a bug)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m = onnx.load(path)
    inits = {i.name: i for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in m.graph.node:
        for i in n.input:
            consumers[i].append(n)
    rng = np.random.default_rng(seed)
    worst, count = 0, 0
    for conv in (n for n in m.graph.node if n.op_type == "Conv"):
        dq_x = producer.get(conv.input[0])
        q_y = consumers[conv.output[0]][0] if consumers[conv.output[0]] else None
        if dq_x is None or dq_x.op_type != "DequantizeLinear" or q_y is None or q_y.op_type != "QuantizeLinear":
            continue
        w_dq, b_dq = producer[conv.input[1]], producer[conv.input[2]]
        w = onnx.numpy_helper.to_array(inits[w_dq.input[0]])
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        channels = w.shape[1] * attrs.get("group", 1)
        nodes = [helper.make_node("DequantizeLinear", ["x", dq_x.input[1], dq_x.input[2]], ["xf"]), w_dq, b_dq,
                 helper.make_node("Conv", ["xf", conv.input[1], conv.input[2]], ["yf"], **attrs),
                 helper.make_node("QuantizeLinear", ["yf", q_y.input[1], q_y.input[2]], ["y"])]
        used = {i for n in nodes for i in n.input}
        g = helper.make_graph(nodes, "one_conv", [helper.make_tensor_value_info("x", TensorProto.UINT8, [4, channels, 15, 15])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [inits[k] for k in sorted(used) if k in inits])
        one = helper.make_model(g, opset_imports=list(m.opset_import))
        one.ir_version = m.ir_version
        data = one.SerializeToString()
        x = rng.integers(0, 256, (4, channels, 15, 15), dtype=np.uint8)
        outs = []
        for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.log_severity_level, so.graph_optimization_level = 1, 3, level
            outs.append(ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])
        worst = max(worst, int(np.abs(outs[0].astype(np.int32) - outs[1].astype(np.int32)).max()))
        count += 1
    return count, worst


def tflite_features(tflite_path, x):
    """Features (AvgPool tensor, dequantized) and logits of the TFLite model itself."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            return None
    import warnings

    with warnings.catch_warnings():  # preserving all tensors is what lets us read the AvgPool
        warnings.simplefilter("ignore")
        it = Interpreter(model_path=tflite_path, num_threads=2, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    details = {d["name"]: d for d in it.get_tensor_details()}
    pool = details["MobilenetV2/Logits/AvgPool"]
    logit_t = [d for n, d in details.items()
               if n.startswith("MobilenetV2/Logits/Squeeze") and int(np.prod(d["shape"])) == 1001][0]
    s, z = inp["quantization"]
    feats, logits = [], []
    for img in x:
        q = np.clip(np.round(img.transpose(1, 2, 0) / s) + z, 0, 255).astype(np.uint8)
        it.set_tensor(inp["index"], q[None])
        it.invoke()
        ps, pz = pool["quantization"]
        feats.append((it.get_tensor(pool["index"]).astype(np.float32).reshape(-1) - pz) * ps)
        ls, lz = logit_t["quantization"]
        logits.append(((it.get_tensor(logit_t["index"]).astype(np.float32).reshape(-1) - lz) * ls)[1:])
    return np.stack(feats), np.stack(logits)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--int8", default=DEFAULT_INT8)
    ap.add_argument("--fp32", default=DEFAULT_FP32)
    ap.add_argument("--tflite", default=DEFAULT_TFLITE)
    ap.add_argument("--images", default=DEFAULT_IMAGES)
    ap.add_argument("--limit", type=int, default=480, help="images (0 = all that match)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per model (best counts)")
    ap.add_argument("--bench-images", type=int, default=160, help="images per timed pass")
    ap.add_argument("--no-spinning", action="store_true",
                    help="session.intra_op.allow_spinning=0 for both models")
    ap.add_argument("--no-tflite", action="store_true", help="skip the LiteRT comparison")
    ap.add_argument("--no-saturation-check", action="store_true",
                    help="skip running each int8 convolution alone on random inputs against the exact result")
    args = ap.parse_args()

    import onnxruntime as ort

    for p in (args.int8, args.fp32):
        if not os.path.isfile(p):
            sys.exit(f"check_int8: {p} not found (build it with tools/quantize_int8.py)")
    t0 = time.monotonic()
    paths, x = load_images(args.images, args.limit)
    print(f"images: {len(paths)} from {args.images} (decoded in {time.monotonic() - t0:.1f} s)")
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op threads, batch {args.batch}, "
          f"spinning {'off' if args.no_spinning else 'on'}")

    with tempfile.TemporaryDirectory() as tmp:
        opt_path = os.path.join(tmp, "int8_optimized.onnx")
        s8 = session(args.int8, args.threads, not args.no_spinning, opt_path)
        counts = op_counts(opt_path)
    s32 = session(args.fp32, args.threads, not args.no_spinning)
    print("int8 model after ORT optimisation: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    float_convs = counts.get("Conv", 0) + counts.get("com.microsoft.FusedConv", 0)
    if float_convs:
        print(f"WARNING: {float_convs} float convolutions left in the int8 model")

    exact = True
    if not args.no_saturation_check:
        n_convs, largest = saturation_check(args.int8)
        exact = largest <= 1
        if n_convs:
            print(f"int8 kernels vs exact on random full-range inputs: {n_convs} convolutions, largest "
                  f"difference {largest} ({'no saturation' if exact else 'SATURATION: results corrupted'})")
        else:
            print("int8 kernels vs exact: skipped (no QDQ convolutions in the model)")

    f32, l32 = run_all(s32, x, args.batch)
    f8, l8 = run_all(s8, x, args.batch)
    cos = cosine(f8, f32)
    top1 = (l8.argmax(1) == l32.argmax(1))
    worst = int(cos.argmin())
    print(f"features int8 vs fp32: cosine mean {cos.mean():.4f}, worst {cos.min():.4f} "
          f"({os.path.relpath(paths[worst], os.path.dirname(os.path.dirname(paths[worst])))}), "
          f"p1 {np.percentile(cos, 1):.4f}; max |diff| {np.abs(f8 - f32).max():.3f}")
    print(f"logits top-1 int8 = fp32: {int(top1.sum())}/{len(top1)} ({top1.mean():.1%})")

    if not args.no_tflite:
        t = tflite_features(args.tflite, x)
        if t is None:
            print("TFLite reference: skipped (pip install ai-edge-litert to enable)")
        else:
            ft, lt = t
            ct32, ct8 = cosine(ft, f32), cosine(ft, f8)
            print(f"TFLite (LiteRT) features vs fp32: cosine mean {ct32.mean():.4f}, worst {ct32.min():.4f}; "
                  f"top-1 = fp32 {(lt.argmax(1) == l32.argmax(1)).mean():.1%}")
            print(f"TFLite (LiteRT) features vs int8: cosine mean {ct8.mean():.4f}, worst {ct8.min():.4f}; "
                  f"top-1 = int8 {(lt.argmax(1) == l8.argmax(1)).mean():.1%}")

    # model-only throughput: same batches, models alternating, best pass of each
    nb = max(1, min(len(x), args.bench_images) // args.batch)
    batches = [x[i * args.batch:(i + 1) * args.batch] for i in range(nb)]
    n = sum(len(b) for b in batches)
    for s in (s32, s8):  # warm-up
        s.run(None, {"input": batches[0]})
    best = {"fp32": float("inf"), "int8": float("inf")}
    cpu = {"fp32": float("inf"), "int8": float("inf")}
    for _ in range(args.repeats):
        for name, s in (("fp32", s32), ("int8", s8)):
            c0, t = os.times(), time.perf_counter()
            for b in batches:
                s.run(None, {"input": b})
            best[name] = min(best[name], time.perf_counter() - t)
            c1 = os.times()
            cpu[name] = min(cpu[name], (c1.user + c1.system) - (c0.user + c0.system))
    r32, r8 = n / best["fp32"], n / best["int8"]
    print(f"throughput ({n} images a pass, best of {args.repeats}): fp32 {r32:.1f} img/s, "
          f"int8 {r8:.1f} img/s, ratio {r8 / r32:.2f}x")
    print(f"CPU time per image (all threads, best pass): fp32 {1000 * cpu['fp32'] / n:.1f} ms, "
          f"int8 {1000 * cpu['int8'] / n:.1f} ms, ratio {cpu['fp32'] / max(cpu['int8'], 1e-9):.2f}x "
          "(less sensitive to other load on the machine; counts spinning threads too)")

    ok = cos.mean() >= 0.99 and cos.min() >= 0.97
    print("targets (cosine mean >= 0.99, worst >= 0.97): " + ("met" if ok else "MISSED"))
    return 0 if ok and exact else 1


if __name__ == "__main__":
    sys.exit(main())
