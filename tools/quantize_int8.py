#!/usr/bin/env python3
"""Build verger's int8 MobileNetV2 ONNX model from the quantization-aware-trained
TFLite file, with the file's own weight and activation scales and zero points.

    python tools/quantize_int8.py [OUTPUT] [--tflite PATH]

OUTPUT defaults to models/mobilenet_v2_1.0_224_int8.onnx under the repository root;
the TFLite file defaults to ../shared/models/mobilenet_v2_1.0_224_quant.tflite beside
the repository and must have the sha256 below (any other file is refused).

The model has the fp32 model's interface: input `input` float32 [N,3,224,224] (NCHW,
x = pixel/127.5 - 1), outputs `features` float32 [N,1280] and `logits` float32
[N,1000] (TF-slim's background class dropped). Inside, every convolution and residual
Add runs on uint8 activations with exactly the scales and zero points the TFLite file
was trained with, in QDQ form, which ONNX Runtime fuses into its int8 kernels
(QLinearConv, QLinearAdd). See tools/README.md for the choices and the figures.

The same TFLite file always gives the same output bytes (the script prints the
sha256). Dependencies: numpy, flatbuffers, tflite, onnx (tools/requirements.txt).
"""

import argparse
import hashlib
import os
import sys
import time

import numpy as np

TFLITE_SHA256 = "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TFLITE = os.path.join(os.path.dirname(REPO_ROOT), "shared", "models",
                              "mobilenet_v2_1.0_224_quant.tflite")
DEFAULT_OUTPUT = os.path.join("models", "mobilenet_v2_1.0_224_int8.onnx")

# ONNX IR 8 / opset 13: the oldest with per-axis Quantize/DequantizeLinear, so older
# runtimes can open the file too.
IR_VERSION = 8
OPSET = 13

# Weight encodings. TFLite stores uint8 q with a per-tensor scale s and zero point zp.
#   u8      q and zp as they are (exact). ONNX Runtime runs them with its u8u8 kernels
#           (16-bit multiply-adds on AVX2): exact, but the slowest int8 path on x86.
#   s8      q - 128 and zp - 128 (exact, same values). u8s8 kernels with a weight zero
#           point: the generic GEMM path.
#   s8sym   int8 q - zp with zero point 0 and a per-output-channel scale. Rows whose
#           q - zp leave [-128, 127] (the one or two rows per tensor that hold the range's
#           extreme) get a slightly larger scale; all others keep s and their exact values.
#           Zero point 0 selects ONNX Runtime's fastest x86 kernels (MlasConvSym: indirect
#           convolution with fused requantisation). Without AVX-VNNI these multiply u8 x s8
#           pairs into a saturating int16 (vpmaddubsw), which corrupts results unless
#           |w[k]| + |w[k+1]| <= 128 for every pair of neighbouring input channels.
#   s8safe  s8sym made saturation-free: the channels of every activation tensor are
#           reordered (a permutation that leaves the network's function unchanged: the
#           producers' output rows and the consumers' input columns move together) so that
#           large weights sit next to small ones; rows where no order satisfies the bound
#           get a scale just large enough. The default for pointwise convolutions.
# Depthwise convolutions use s8sym: their kernel multiplies in 32 bits, no saturation.
# The first convolution reads the image (3 channels, an order that cannot move): "pad4"
# adds a zero fourth channel (MlasConvSym needs a multiple of 4) and orders the four so
# that the pairs are (R, B) and (G, 0), which leaves a single row over the limit.
WEIGHT_MODES = ("s8safe", "s8sym", "s8", "u8")
FORMATS = ("qdq", "qlinear")
FIRST_EXTRA = ("pad4", "float")
PAIR_LIMIT = 128  # 255 * 128 = 32640 <= 32767: no int16 saturation


class Refused(Exception):
    pass


# --------------------------------------------------------------------------- TFLite


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class TfliteGraph:
    """The parts of the (single-subgraph) TFLite model that the conversion needs."""

    def __init__(self, buf):
        import tflite

        self.tfl = tflite
        self.model = tflite.Model.GetRootAsModel(buf, 0)
        if self.model.SubgraphsLength() != 1:
            raise Refused("expected one subgraph")
        self.g = self.model.Subgraphs(0)
        self.names = {v: k for k, v in vars(tflite.BuiltinOperator).items()
                      if not k.startswith("_") and isinstance(v, int)}

    def tensor(self, i):
        t = self.g.Tensors(int(i))
        q = t.Quantization()
        scale = zp = None
        if q is not None and q.ScaleLength() > 0:
            if q.ScaleLength() != 1:
                raise Refused(f"tensor {t.Name().decode()}: per-axis quantisation not expected")
            scale = np.float32(q.ScaleAsNumpy()[0])
            zp = int(q.ZeroPointAsNumpy()[0])
        return {"index": int(i), "name": t.Name().decode(),
                "shape": [int(d) for d in t.ShapeAsNumpy()], "type": t.Type(),
                "scale": scale, "zp": zp, "buffer": t.Buffer()}

    def data(self, t):
        raw = self.model.Buffers(t["buffer"]).DataAsNumpy()
        if isinstance(raw, int) or raw is None:
            raise Refused(f"tensor {t['name']} has no data")
        tt = self.tfl.TensorType
        dtype = {tt.UINT8: np.uint8, tt.INT8: np.int8, tt.INT32: np.int32}[t["type"]]
        return np.frombuffer(raw.tobytes(), dtype=dtype).reshape(t["shape"])

    def ops(self):
        tfl = self.tfl
        for k in range(self.g.OperatorsLength()):
            op = self.g.Operators(k)
            oc = self.model.OperatorCodes(op.OpcodeIndex())
            kind = self.names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "?")
            opts = {}
            table = op.BuiltinOptions()
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                o = tfl.Conv2DOptions() if kind == "CONV_2D" else tfl.DepthwiseConv2DOptions()
                o.Init(table.Bytes, table.Pos)
                opts = dict(padding=o.Padding(), stride=(o.StrideH(), o.StrideW()),
                            dilation=(o.DilationHFactor(), o.DilationWFactor()),
                            act=o.FusedActivationFunction())
                if kind == "DEPTHWISE_CONV_2D":
                    opts["depth_multiplier"] = o.DepthMultiplier()
            elif kind == "ADD":
                o = tfl.AddOptions()
                o.Init(table.Bytes, table.Pos)
                opts = dict(act=o.FusedActivationFunction())
            elif kind == "AVERAGE_POOL_2D":
                o = tfl.Pool2DOptions()
                o.Init(table.Bytes, table.Pos)
                opts = dict(padding=o.Padding(), filter=(o.FilterHeight(), o.FilterWidth()),
                            act=o.FusedActivationFunction())
            yield (k, kind, [self.tensor(i) for i in op.InputsAsNumpy()],
                   [self.tensor(i) for i in op.OutputsAsNumpy()], opts)

    def io(self):
        return ([self.tensor(i) for i in self.g.InputsAsNumpy()],
                [self.tensor(i) for i in self.g.OutputsAsNumpy()])


def same_pads(in_hw, kernel_hw, stride):
    """TF 'SAME' padding as ONNX pads [top, left, bottom, right] (the odd pixel at the end)."""
    begin, end = [], []
    for n, k, s in zip(in_hw, kernel_hw, stride):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        begin.append(total // 2)
        end.append(total - total // 2)
    return begin + end


def check_fused_activation(where, act, out, tfl):
    """The int8 kernels clamp to [0, 255]; make sure that is exactly TFLite's fused clamp."""
    aft = tfl.ActivationFunctionType
    s, zp = float(out["scale"]), out["zp"]
    if act == aft.NONE:
        return
    if act == aft.RELU6:
        lo, hi = max(0, zp + int(round(0.0 / s))), min(255, zp + int(round(6.0 / s)))
    elif act == aft.RELU:
        lo, hi = max(0, zp), 255
    else:
        raise Refused(f"{where}: fused activation {act} not supported")
    if (lo, hi) != (0, 255):
        raise Refused(f"{where}: fused activation clamps to [{lo}, {hi}], not the full uint8 "
                      "range; this converter does not emit a Clip")


# --------------------------------------------------------------------------- reading


def read_layers(tg):
    """The TFLite graph as a list of layer dicts (weights as int arrays, ONNX layouts)."""
    tfl = tg.tfl
    (tin,), _ = tg.io()
    if tin["shape"] != [1, 224, 224, 3] or tin["type"] != tfl.TensorType.UINT8:
        raise Refused(f"unexpected TFLite input {tin['shape']}")
    layers, pooled, head = [], None, False
    for k, kind, ins, outs, opts in tg.ops():
        if head:
            if kind in ("RESHAPE", "SOFTMAX"):
                continue  # the model returns the logits before the softmax
            raise Refused(f"op {k} {kind} after the classifier is not supported")
        if kind == "CONV_2D" and pooled is not None and ins[0]["index"] == pooled:
            x, w, b = ins
            layers.append(dict(kind="classifier", k=k, x=x, w=tg.data(w), w_t=w,
                               bias=tg.data(b), b_t=b))
            head = True
        elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            x, w, b = ins
            (y,) = outs
            check_fused_activation(f"op {k}", opts["act"], y, tfl)
            if opts["dilation"] != (1, 1):
                raise Refused(f"op {k}: dilation not supported")
            q = tg.data(w)
            if kind == "CONV_2D":
                q, group = q.transpose(0, 3, 1, 2), 1                 # OHWI -> OIHW
            else:
                if opts["depth_multiplier"] != 1:
                    raise Refused(f"op {k}: depth multiplier != 1")
                q = q.transpose(3, 0, 1, 2)                           # 1HWC -> C1HW
                group = q.shape[0]
            kh, kw = q.shape[2:]
            pads = (same_pads(x["shape"][1:3], (kh, kw), opts["stride"])
                    if opts["padding"] == tfl.Padding.SAME else [0, 0, 0, 0])
            if not np.isclose(np.float32(b["scale"]), np.float32(x["scale"]) * np.float32(w["scale"]),
                              rtol=1e-6, atol=0):
                raise Refused(f"op {k}: bias scale is not input scale * weight scale")
            layers.append(dict(
                kind="dw" if group > 1 else "conv", k=k, x=x, y=y,
                q=np.ascontiguousarray(q), w_scale=np.float32(w["scale"]), w_zp=w["zp"],
                bias=tg.data(b).astype(np.int32),
                attrs=dict(kernel_shape=[int(kh), int(kw)], strides=[int(s) for s in opts["stride"]],
                           pads=[int(p) for p in pads], group=int(group))))
        elif kind == "ADD":
            (a, b), (y,) = ins, outs
            check_fused_activation(f"op {k}", opts["act"], y, tfl)
            layers.append(dict(kind="add", k=k, a=a, b=b, y=y))
        elif kind == "AVERAGE_POOL_2D":
            (x,), (y,) = ins, outs
            if tuple(opts["filter"]) != tuple(x["shape"][1:3]) or opts["act"] != 0:
                raise Refused(f"op {k}: only a global average pool is supported")
            layers.append(dict(kind="pool", k=k, x=x, y=y))
            pooled = y["index"]
        else:
            raise Refused(f"op {k}: {kind} not supported by this converter")
    if not head:
        raise Refused("did not find the average pool and the classifier")
    return tin, layers


# --------------------------------------------------------------------------- weights


def pair_sums(w):
    """|w[k]| + |w[k+1]| over the pairs that ONNX Runtime's x86 u8s8 kernels add in int16.
    w: int [O, I, kh, kw]; the kernels' K order is (kh, kw, I), odd K padded with a zero."""
    o = w.shape[0]
    a = np.abs(w.astype(np.int32)).transpose(0, 2, 3, 1).reshape(o, -1)
    if a.shape[1] % 2:
        a = np.concatenate([a, np.zeros((o, 1), a.dtype)], axis=1)
    return a[:, 0::2] + a[:, 1::2]


def set_weights(layer, mode, depthwise):
    """Fill layer['d'] (exact q - zp, int32) and layer['factor'] (per row, 1 = TFLite scale)
    for the symmetric modes, or layer['w'] etc. directly for u8 / s8."""
    layer["mode"] = mode
    q, zp = layer["q"], layer["w_zp"]
    if mode == "u8":
        layer.update(w=q.astype(np.uint8), w_scale_out=layer["w_scale"], w_zp_out=np.uint8(zp))
        return
    if mode == "s8":
        layer.update(w=(q.astype(np.int16) - 128).astype(np.int8), w_scale_out=layer["w_scale"],
                     w_zp_out=np.int8(zp - 128))
        return
    d = q.astype(np.int32) - zp
    flat = d.reshape(d.shape[0], -1)
    layer["d"] = d
    layer["factor"] = np.maximum(np.maximum(flat.max(1) / 127.0, flat.min(1) / -128.0), 1.0)
    layer["pair_safe"] = mode == "s8safe" and not depthwise


def finish_symmetric(layer):
    """Round d / factor to int8, growing factor where rounding or pairs still exceed limits."""
    d, factor = layer["d"], layer["factor"].copy()
    o = d.shape[0]
    w = d.copy()
    for c in range(o):
        f = factor[c]
        if f == 1.0 and (not layer["pair_safe"] or pair_sums(d[c:c + 1]).max() <= PAIR_LIMIT):
            continue
        if layer["pair_safe"]:
            f = max(f, pair_sums(d[c:c + 1]).max() / PAIR_LIMIT)
        while True:
            wc = np.clip(np.round(d[c] / f), -128, 127).astype(np.int32)
            if not layer["pair_safe"] or pair_sums(wc[None]).max() <= PAIR_LIMIT:
                break
            f *= 1.0 + 1.0 / 256  # rounding pushed a pair over the limit: a slightly larger step
        factor[c], w[c] = f, wc
    layer["w"] = w.astype(np.int8)
    layer["w_scale_out"] = (layer["w_scale"] * factor.astype(np.float32)).astype(np.float32)
    layer["w_zp_out"] = np.zeros(o, np.int8)
    layer["bias"] = np.where(factor == 1.0, layer["bias"],
                             np.round(layer["bias"] / factor)).astype(np.int32)
    layer["rescaled"] = int((factor != 1.0).sum())


def pair_order(a):
    """A channel order for one activation tensor: a[r, c] = |weight| of input channel c in
    consumer row r. Pairs (order[2i], order[2i+1]) should satisfy a[:, i] + a[:, j] <= 128 in
    every row. Greedy matching, most constrained channel first; deterministic."""
    c = a.shape[1]
    a = a.astype(np.int32)
    worst = np.empty((c, c), np.int32)          # worst[i, j] = max_r a[r, i] + a[r, j]
    for i in range(c):
        worst[i] = (a[:, i:i + 1] + a).max(axis=0)
    ok = worst <= PAIR_LIMIT
    np.fill_diagonal(ok, False)
    over = np.zeros((c, c), np.int32)           # rows over the limit, for pairs that must break it
    free = np.ones(c, bool)
    degree = ok.sum(axis=1)
    order = []
    for _ in range(c // 2):
        cand = np.nonzero(free)[0]
        i = cand[np.lexsort((cand, degree[cand]))[0]]
        free[i] = False
        partners = np.nonzero(free & ok[i])[0]
        if len(partners):
            j = partners[np.lexsort((partners, worst[i, partners], degree[partners]))[0]]
        else:
            partners = np.nonzero(free)[0]
            for p in partners:
                over[i, p] = int(((a[:, i] + a[:, p]) > PAIR_LIMIT).sum())
            j = partners[np.lexsort((partners, worst[i, partners], over[i, partners]))[0]]
        free[j] = False
        order += [int(i), int(j)]
        degree -= ok[:, i].astype(np.int32) + ok[:, j].astype(np.int32)
    order += [int(i) for i in np.nonzero(free)[0]]
    return np.array(order)


def reorder_channels(tin, layers, log):
    """Permute the channels of each activation tensor (the same order for the tensors that
    residual Adds and depthwise convolutions tie together) so that the pointwise
    convolutions' weight pairs stay under the saturation limit."""
    parent = {}

    def find(t):
        while parent.get(t, t) != t:
            t = parent[t]
        return t

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for l in layers:
        if l["kind"] == "add":
            union(l["a"]["index"], l["y"]["index"])
            union(l["b"]["index"], l["y"]["index"])
        elif l["kind"] == "dw":
            union(l["x"]["index"], l["y"]["index"])
    fixed = {find(tin["index"])} | {find(l["x"]["index"]) for l in layers if l["kind"] == "pool"}
    groups = sorted({find(l["x"]["index"]) for l in layers if l["kind"] == "conv"} - fixed)
    moved = 0
    for grp in groups:
        consumers = [l for l in layers if l["kind"] == "conv" and find(l["x"]["index"]) == grp]
        producers = [l for l in layers if l["kind"] in ("conv", "dw") and find(l["y"]["index"]) == grp]
        if not all(l.get("pair_safe") for l in consumers):
            continue
        rows = [np.abs(np.round(l["d"] / l["factor"][:, None, None, None])).astype(np.int32)
                .transpose(0, 2, 3, 1).reshape(-1, l["d"].shape[1]) for l in consumers]
        order = pair_order(np.concatenate(rows, axis=0))
        for l in consumers:
            l["d"] = l["d"][:, order]
        for l in producers:  # output rows (and their per-row scale and bias) move along
            if "d" in l:
                l["d"], l["factor"] = l["d"][order], l["factor"][order]
            else:
                l["w"] = l["w"][order]
            l["bias"] = l["bias"][order]
        moved += 1
    log(f"reordered the channels of {moved} activation tensor groups")


# --------------------------------------------------------------------------- ONNX


class OnnxGraph:
    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.init_names = [], [], set()
        self.uses_ms = False

    def const(self, name, array):
        if name not in self.init_names:
            self.inits.append(self.numpy_helper.from_array(np.asarray(array), name))
            self.init_names.add(name)
        return name

    def node(self, op, inputs, outputs, name, domain=None, **attrs):
        n = self.helper.make_node(op, inputs, outputs, name=name, **attrs)
        if domain:
            n.domain = domain
            self.uses_ms = True
        self.nodes.append(n)
        return outputs[0]

    def qparams(self, t):
        key = f"t{t['index']}"
        return (self.const(f"{key}_scale", np.float32(t["scale"])),
                self.const(f"{key}_zp", np.uint8(t["zp"])))

    def dq(self, qname, t, consumer):
        """A DequantizeLinear of activation `qname` dedicated to one consumer (QDQ format)."""
        s, z = self.qparams(t)
        return self.node("DequantizeLinear", [qname, s, z], [f"{qname}_dq_{consumer}"],
                         f"{consumer}_dq_{qname}")


def emit(tin, layers, fmt):
    import onnx
    from onnx import TensorProto, helper

    g = OnnxGraph()
    q = {}  # TFLite tensor index -> ONNX name of the uint8 NCHW tensor
    s, z = g.qparams(tin)
    q[tin["index"]] = g.node("QuantizeLinear", ["input", s, z], ["input_q"], "input_quantize")
    for l in layers:
        k = l["k"]
        if l.get("first") == "float":
            x, y = l["x"], l["y"]
            name, yname = f"op{k}_conv", f"t{y['index']}"
            bias_f = (np.float32(x["scale"]) * l["w_scale"] * l["bias"].astype(np.float32)).astype(np.float32)
            yf = g.node("Conv", ["input", g.const(f"{name}_w", l["w"]), g.const(f"{name}_b", bias_f)],
                        [f"{yname}_f"], name, **l["attrs"])
            ys, yz = g.qparams(y)
            q[y["index"]] = g.node("QuantizeLinear", [yf, ys, yz], [yname], f"{name}_quantize")
            continue
        if l["kind"] in ("conv", "dw"):
            x, y = l["x"], l["y"]
            name = f"op{k}_{l['kind']}"
            if l.get("first") == "pad4":
                xs, xz = g.qparams(x)
                padded = g.node("Pad", [q[x["index"]], g.const("input_pads", np.array([0, 0, 0, 0, 0, 1, 0, 0], np.int64)),
                                        xz], ["input_q_pad"], "input_pad")
                q[x["index"]] = g.node("Gather", [padded, g.const("input_order", l["input_order"].astype(np.int64))],
                                       ["input_q4"], "input_order", axis=1)
            wn = g.const(f"{name}_w", l["w"])
            wsn = g.const(f"{name}_w_scale", l["w_scale_out"])
            wzn = g.const(f"{name}_w_zp", l["w_zp_out"])
            yname = f"t{y['index']}"
            if fmt == "qlinear":
                xs, xz = g.qparams(x)
                ys, yz = g.qparams(y)
                q[y["index"]] = g.node(
                    "QLinearConv",
                    [q[x["index"]], xs, xz, wn, wsn, wzn, ys, yz, g.const(f"{name}_b", l["bias"])],
                    [yname], name, **l["attrs"])
                continue
            ax = dict(axis=0) if np.ndim(l["w_scale_out"]) == 1 else {}
            bias_scale = (np.float32(x["scale"]) * np.asarray(l["w_scale_out"], np.float32)).astype(np.float32)
            xf = g.dq(q[x["index"]], x, name)
            wf = g.node("DequantizeLinear", [wn, wsn, wzn], [f"{name}_w_dq"], f"{name}_w_dequantize", **ax)
            bf = g.node("DequantizeLinear",
                        [g.const(f"{name}_b", l["bias"]), g.const(f"{name}_b_scale", bias_scale),
                         g.const(f"{name}_b_zp", np.zeros(np.shape(bias_scale), np.int32))],
                        [f"{name}_b_dq"], f"{name}_b_dequantize", **ax)
            yf = g.node("Conv", [xf, wf, bf], [f"{yname}_f"], name, **l["attrs"])
            ys, yz = g.qparams(y)
            q[y["index"]] = g.node("QuantizeLinear", [yf, ys, yz], [yname], f"{name}_quantize")
        elif l["kind"] == "add":
            a, b, y = l["a"], l["b"], l["y"]
            name, yname = f"op{k}_add", f"t{y['index']}"
            ys, yz = g.qparams(y)
            if fmt == "qlinear":
                as_, az = g.qparams(a)
                bs_, bz = g.qparams(b)
                q[y["index"]] = g.node("QLinearAdd", [q[a["index"]], as_, az, q[b["index"]], bs_, bz, ys, yz],
                                       [yname], name, domain="com.microsoft")
            else:
                yf = g.node("Add", [g.dq(q[a["index"]], a, name), g.dq(q[b["index"]], b, name)],
                            [f"{yname}_f"], name)
                q[y["index"]] = g.node("QuantizeLinear", [yf, ys, yz], [yname], f"{name}_quantize")
        elif l["kind"] == "pool":
            # features = mean of the dequantized last activation, in float (TFLite would round
            # it once more, to the pool output's steps of 6/255).
            xs, xz = g.qparams(l["x"])
            xf = g.node("DequantizeLinear", [q[l["x"]["index"]], xs, xz], ["last_dq"], f"op{k}_dequantize")
            pooled = g.node("GlobalAveragePool", [xf], ["pooled"], f"op{k}_pool")
            g.node("Flatten", [pooled], ["features"], f"op{k}_flatten", axis=1)
        elif l["kind"] == "classifier":
            # 1x1 conv on the pooled features -> Gemm in float on `features`, with the file's
            # weights and bias dequantized (scale * (q - zp)); class 0 (background) dropped.
            w_t, b_t = l["w_t"], l["b_t"]
            wf = (np.float32(w_t["scale"]) * (l["w"].reshape(l["w"].shape[0], -1).astype(np.float32)
                                              - np.float32(w_t["zp"]))).astype(np.float32)
            bf = (np.float32(b_t["scale"]) * l["bias"].astype(np.float32)).astype(np.float32)
            if wf.shape != (1001, 1280):
                raise Refused(f"unexpected classifier shape {wf.shape}")
            g.node("Gemm", ["features", g.const("classifier_w", wf[1:]), g.const("classifier_b", bf[1:])],
                   ["logits"], f"op{k}_classifier", transB=1)

    if not any("input_q" in n.input for n in g.nodes):  # the first conv reads the float input
        g.nodes = [n for n in g.nodes if n.name != "input_quantize"]
        g.inits = [t for t in g.inits if t.name not in (f"t{tin['index']}_scale", f"t{tin['index']}_zp")]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])
    outs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 1280]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])]
    graph = helper.make_graph(g.nodes, "mobilenet_v2_1.0_224_int8", [inp], outs, g.inits)
    opsets = [helper.make_opsetid("", OPSET)]
    if g.uses_ms:
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="verger tools/quantize_int8.py",
                              producer_version="1")
    model.ir_version = IR_VERSION
    model.doc_string = (
        "MobileNetV2 1.0 224 int8 built from mobilenet_v2_1.0_224_quant.tflite "
        f"(sha256 {TFLITE_SHA256}) with the file's own quantisation parameters. "
        "input: float32 [N,3,224,224] NCHW, x = pixel/127.5 - 1. outputs: features float32 "
        "[N,1280] (global average pool of the last ReLU6 activation), logits float32 [N,1000] "
        "(ImageNet, background class dropped).")
    onnx.checker.check_model(model)
    return model


def build(tg, fmt, weights, dw_weights, first_weights, log):
    tin, layers = read_layers(tg)
    for l in layers:
        if l["kind"] == "conv" and l["x"]["index"] == tin["index"] and first_weights in FIRST_EXTRA:
            l["first"] = first_weights
            if first_weights == "float":
                l["w"] = l["w_scale"] * (l["q"].astype(np.float32) - np.float32(l["w_zp"]))
                continue
            # pad4: the input gets a 4th channel (zero), as MlasConvSym needs a multiple of 4,
            # and the channels are ordered so that each weight pair stays under the limit.
            q = np.full((l["q"].shape[0], 4) + l["q"].shape[2:], l["w_zp"], np.uint8)
            q[:, :3] = l["q"]
            d = np.abs(q.astype(np.int32) - l["w_zp"])
            order = pair_order(d.transpose(0, 2, 3, 1).reshape(-1, 4))
            l["q"], l["input_order"] = q[:, order], order
            set_weights(l, "s8safe", False)
        elif l["kind"] == "conv":
            first = l["x"]["index"] == tin["index"]
            set_weights(l, first_weights if first and first_weights else weights, False)
        elif l["kind"] == "dw":
            set_weights(l, dw_weights, True)
    if any(l.get("pair_safe") for l in layers):
        reorder_channels(tin, layers, log)
    rescaled = 0
    for l in layers:
        if "d" in l:
            finish_symmetric(l)
            rescaled += l["rescaled"]
            if l.get("pair_safe") and pair_sums(l["w"]).max() > PAIR_LIMIT:
                raise Refused(f"op {l['k']}: weight pairs over the saturation limit")  # not reached
    model = emit(tin, layers, fmt)
    for key, value in (("source_tflite_sha256", TFLITE_SHA256), ("format", fmt),
                       ("weights", weights), ("depthwise_weights", dw_weights),
                       ("first_conv_weights", first_weights or weights)):
        p = model.metadata_props.add()
        p.key, p.value = key, value
    n = {kind: sum(l["kind"] == kind for l in layers) for kind in ("conv", "dw", "add")}
    log(f"converted {n['conv']} convolutions, {n['dw']} depthwise convolutions, {n['add']} residual "
        f"adds, the average pool and the classifier ({fmt}; weights {weights}, depthwise "
        f"{dw_weights}, first conv {first_weights or weights}; {rescaled} of "
        f"{sum(l['w'].shape[0] for l in layers if 'w' in l and l['kind'] != 'classifier')} "
        "weight rows with a scale other than the file's)")
    return model


# --------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", nargs="?", default=DEFAULT_OUTPUT,
                    help=f"where to write the model (default: {DEFAULT_OUTPUT} under the repository root)")
    ap.add_argument("--tflite", default=DEFAULT_TFLITE, help="the source TFLite file (default: %(default)s)")
    ap.add_argument("--format", choices=FORMATS, default="qdq",
                    help="qdq (default: standard ONNX ops that ONNX Runtime fuses into int8 kernels) "
                         "or qlinear (QLinearConv and com.microsoft QLinearAdd)")
    ap.add_argument("--weights", choices=WEIGHT_MODES, default="s8safe",
                    help="weights of the pointwise convolutions (default s8safe; see the source)")
    ap.add_argument("--dw-weights", choices=WEIGHT_MODES, default="s8sym",
                    help="weights of the depthwise convolutions (default s8sym)")
    ap.add_argument("--first-weights", choices=WEIGHT_MODES + FIRST_EXTRA, default="pad4",
                    help="the first convolution (3 input channels): pad4 (default: a zero 4th input "
                         "channel and a channel order that keeps weight pairs under the limit, so "
                         "the fast symmetric kernel applies), float (an fp32 Conv on the float "
                         "input), or one of the weight modes")
    args = ap.parse_args(argv)
    t0 = time.monotonic()

    def log(msg):
        print(f"quantize_int8: {msg}", flush=True)

    output = args.output
    if not os.path.isabs(output):
        output = os.path.join(REPO_ROOT, output) if output == DEFAULT_OUTPUT else os.path.abspath(output)
    try:
        if not os.path.isfile(args.tflite):
            raise Refused(f"TFLite file not found: {args.tflite}")
        digest = sha256_of(args.tflite)
        if digest != TFLITE_SHA256:
            raise Refused(f"{args.tflite} has sha256 {digest}, expected {TFLITE_SHA256} "
                          "(mobilenet_v2_1.0_224_quant.tflite); refusing to convert another file")
        log(f"source {args.tflite} (sha256 verified)")
        with open(args.tflite, "rb") as f:
            model = build(TfliteGraph(f.read()), args.format, args.weights, args.dw_weights,
                          args.first_weights, log)
    except Refused as e:
        print(f"quantize_int8: error: {e}", file=sys.stderr)
        return 2

    data = model.SerializeToString()
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, output)
    log(f"wrote {output} ({len(data):,} bytes) in {time.monotonic() - t0:.1f} s")
    print(f"sha256 {hashlib.sha256(data).hexdigest()}  {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
