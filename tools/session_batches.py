"""ONNX Runtime alone: images/s by session layout and inference batch size.

    .venv/bin/python tools/session_batches.py ../shared/models/mobilenet_v2_1.0_224_features.onnx
    .venv/bin/python tools/session_batches.py models/mobilenet_v2_1.0_224_int8.onnx --rounds 2

For each batch size it runs random input through one session with every
core's thread and through one 1-thread session per core, called at once
from one thread each (the layout `verger run` uses), and prints images/s.
This is where `verger_model::PREFERRED_BATCH` and `sessions_for` come from;
the machine is noisy, so compare figures of the same round.
"""

import argparse
import os
import threading
import time

import numpy as np
import onnxruntime as ort


def session(model, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def rate(sessions, batch, images):
    x = np.random.rand(batch, 3, 224, 224).astype(np.float32)
    for s in sessions:
        s.run(["features"], {"input": x})  # warm-up
    calls = max(len(sessions), images // batch)

    def work(s, count):
        for _ in range(count):
            s.run(["features"], {"input": x})

    shares = [calls // len(sessions)] * len(sessions)
    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(s, n)) for s, n in zip(sessions, shares)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(shares) * batch / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--images", type=int, default=320, help="images per measurement")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args()
    one = [session(args.model, args.cores)]
    per_core = [session(args.model, 1) for _ in range(args.cores)]
    print(f"{'round':>5} {'batch':>5} {'1 x ' + str(args.cores) + ' threads':>14} {str(args.cores) + ' x 1 thread':>14}")
    for r in range(args.rounds):
        for batch in [int(b) for b in args.batches.split(",")]:
            print(
                f"{r + 1:>5} {batch:>5} {rate(one, batch, args.images):>14.1f}"
                f" {rate(per_core, batch, args.images):>14.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
