"""Results of a whole benchmark run, made up, for the report and the targets to work on."""

from __future__ import annotations


def load_level(rps: float, p50: float, p99: float, **extra) -> dict:
    """One load level's figures, as the service benchmark writes them, with no errors."""
    return {
        "throughput_rps": rps,
        "p50_ms": p50,
        "p95_ms": p99,
        "p99_ms": p99,
        "error_count": 0,
        **extra,
    }


def made_up_results(svc16_rps=30.0, peer16_rps=10.0, svc_p99=100.0, peer_p99=200.0, svc1_p50=60.0):
    def runtime(curve):
        return {
            "label": "x",
            "batches": {
                str(b): {"img_per_s": v, "latency_ms": 1e3 * b / v} for b, v in curve.items()
            },
        }

    def level(rps, p50, p99, mb=None):
        return load_level(rps, p50, p99, mean_batch_size=mb, server_cpu_s_per_request=0.1)

    def round_(i, classify_rps, v2_rps):
        order = ["classify", "v2_binary"][:: 1 if i % 2 else -1]
        runs = {
            "classify": {**level(classify_rps, 700, 1500), "non_2xx": 0, "non_200": 0},
            "v2_binary": {**level(v2_rps, 720, 1550), "non_2xx": 0, "non_200": 0},
        }
        runs["classify"]["others_cores"] = 0.25
        return {"round": i, "order": order, "runs": runs, "ratio": v2_rps / classify_rps}

    return {
        "protocols": {
            "connections": 16,
            "body": "flower.jpg, 32764 bytes",
            "routes": {
                "classify": {"path": "/classify?top_k=5", "label": "raw"},
                "v2_binary": {"path": "/v2/models/m/infer", "label": "binary"},
            },
            "answers": {"top": {"classify": [1, 2], "v2_binary": [1, 2]}, "same_top": True},
            "paths": {
                "classify": level(10.0, 700, 1500, 3.9),
                "v2_binary": level(9.7, 720, 1550, 3.9),
            },
            "ratio": 0.97,
            "ratio_all_rounds": [0.97, 0.96, 0.98],
            "unclean_runs": 0,
            "rounds": [round_(1, 10.0, 9.7), round_(2, 10.0, 9.6), round_(3, 10.0, 9.8)],
        },
        "engine": {
            "threads": 1,
            "decode_ms": 10.0,
            "runtimes": {
                "torch_eager": runtime({1: 10.0, 8: 10.0}),
                "ort_fp32": runtime({1: 20.0, 8: 26.0}),  # batch 1: 50 ms
                "ort_int8": runtime({1: 30.0, 8: 40.0}),
            },
            "int8_agreement": {
                "cosine_min": {"logits": 0.9999},
                "top1_agreement": 1.0,
                "top5_overlap": 0.96,
                "images": 16,
            },
        },
        "service": {
            "servers": {
                "service": {
                    "label": "svc",
                    "levels": {
                        "1": level(15.0, svc1_p50, 80.0, 1.0),
                        "16": level(svc16_rps, 400.0, svc_p99, 8.0),
                    },
                },
                "peer": {
                    "label": "peer",
                    "levels": {"1": level(9, 90, 99), "16": level(peer16_rps, 900, peer_p99)},
                },
            }
        },
    }
