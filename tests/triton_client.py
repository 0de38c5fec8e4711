"""Client side of tests/test_serve.py, run by the serving venv's Python (tritonclient's gRPC part
needs protobuf<7, which the project's venv does not have).

    python triton_client.py REQUEST.json

REQUEST: {"http": URL, "grpc": URL, "model": NAME, "inputs": NPZ with "x" [N,3,H,W], "out": NPZ,
"stats": JSON path, "concurrency": C, "requests": R}. Writes, per protocol P, "P/all/OUTPUT" (all
N images in one request) and "P/one/OUTPUT" (the N images one request each, stacked); then C
threads send R single-image requests each over HTTP, and the statistics (batch sizes Triton ran)
and the Prometheus counters go to the stats file.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.request

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp


def client(module, url: str):
    return module.InferenceServerClient(url.split("://", 1)[1])


def infer(module, c, model: str, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    tensor = module.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = c.infer(model, [tensor])
    return {n: result.as_numpy(n) for n in names}


def main(path: str) -> None:
    req = json.load(open(path))
    x = np.load(req["inputs"])["x"]
    arrays = {}
    for proto, module in (("http", thttp), ("grpc", tgrpc)):
        c = client(module, req[proto])
        meta = c.get_model_metadata(req["model"])
        names = [o["name"] for o in meta["outputs"]] if proto == "http" else [o.name for o in meta.outputs]
        for n, v in infer(module, c, req["model"], x, names).items():
            arrays[f"{proto}/all/{n}"] = v
        singles = [infer(module, c, req["model"], x[i:i + 1], names) for i in range(len(x))]
        for n in names:
            arrays[f"{proto}/one/{n}"] = np.concatenate([s[n] for s in singles])
        c.close()
    np.savez(req["out"], **arrays)

    errors = []

    def worker(i: int) -> None:
        c = client(thttp, req["http"])
        try:
            for j in range(req["requests"]):
                k = (i + j) % len(x)
                infer(thttp, c, req["model"], x[k:k + 1], names[:1])
        except Exception as exc:  # reported, and the test fails on it
            errors.append(repr(exc))
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(req["concurrency"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = client(thttp, req["http"]).get_inference_statistics(req["model"])["model_stats"][0]
    metrics_url = req["http"].rsplit(":", 1)[0] + f":{int(req['http'].rsplit(':', 1)[1]) + 2}/metrics"
    metrics = [ln for ln in urllib.request.urlopen(metrics_url, timeout=10).read().decode().splitlines()
               if ln.startswith(("nv_inference_count{", "nv_inference_exec_count{"))]
    json.dump({"errors": errors, "inference_count": stats["inference_count"], "execution_count": stats["execution_count"],
               "batch_sizes": {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]},
               "metrics": metrics}, open(req["stats"], "w"))


if __name__ == "__main__":
    main(sys.argv[1])
