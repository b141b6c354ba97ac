"""The peer of `verger bench --peer`: the short Python script verger is measured against.

Pillow decodes each JPEG with `img.draft("RGB", (224, 224))` (libjpeg's reduced DCT scale),
resizes to 224x224 (bilinear, antialiased), scales to `pixel / 127.5 - 1` in NCHW, and
onnxruntime runs the same model in batches, with the same intra-op threads. It reads the
images in order on one thread while the model runs, as such a script does; it writes
nothing (verger also writes Parquet, so the comparison favours the peer a little).

    python pillow_draft.py MODEL THREADS BATCH LIST_FILE   # LIST_FILE: one image path per line

Prints one JSON line: {"images": N, "seconds": S, "decode_s": D, "inference_s": I}.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def tensor(path):
    img = Image.open(path)
    img.draft("RGB", (224, 224))
    img = img.convert("RGB").resize((224, 224), Image.BILINEAR)
    return (np.asarray(img, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


def main():
    model, threads, batch, list_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with open(list_file) as f:
        paths = [line.rstrip("\n") for line in f if line.strip()]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    decode_s = inference_s = 0.0
    done = 0
    for first in range(0, len(paths), batch):
        t0 = time.perf_counter()
        inputs = np.stack([tensor(p) for p in paths[first : first + batch]])
        t1 = time.perf_counter()
        features = session.run(["features"], {"input": inputs})[0]
        inference_s += time.perf_counter() - t1
        decode_s += t1 - t0
        done += features.shape[0]
    seconds = time.perf_counter() - started
    print(json.dumps({"images": done, "seconds": seconds, "decode_s": decode_s, "inference_s": inference_s}))


if __name__ == "__main__":
    main()
