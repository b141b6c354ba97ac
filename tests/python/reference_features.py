#!/usr/bin/env python3
"""Independent reference for verger's `features` column.

usage: reference_features.py MODEL.onnx IMAGE [IMAGE ...]

Pillow open -> convert('RGB') -> resize((224, 224), BILINEAR) -> x/127.5 - 1
-> NCHW float32 -> onnxruntime CPU, output "features".
Prints one JSON object: {"features": {"<path as given>": [1280 floats], ...}}.
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def preprocess(path):
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((224, 224), Image.BILINEAR)
    x = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0  # HWC
    return np.transpose(x, (2, 0, 1))  # CHW


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    model, paths = sys.argv[1], sys.argv[2:]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    batch = np.stack([preprocess(p) for p in paths]).astype(np.float32)
    (feats,) = sess.run(["features"], {"input": batch})
    out = {p: [float(v) for v in row] for p, row in zip(paths, feats)}
    json.dump({"features": out}, sys.stdout)


if __name__ == "__main__":
    main()
