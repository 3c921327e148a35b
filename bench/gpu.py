"""The GPU benchmark: one script for a lent GPU (an H200 here), one table, under 8 minutes.

    python3 bench/gpu.py [--json FILE]     # on the GPU machine: bench/README.md has the exact command
    python bench/gpu.py --smoke            # tiny sizes on the CPU: checks the script end to end

Every model is built from a config with random weights (nothing is downloaded):

* **Projector under bf16**: the product's trainer (``models.dpo.make_trainer``) on a tiny LLaVA
  loaded in bf16, 2 steps at the paper's projector lr (2e-5): the share of projector weights that
  moved (fp32 master weights; fails below 0.9).
* **DPO step**: a ~0.8B LLaVA shaped like LLaVA-Med v1.5 - a Qwen2-0.5B-shaped text model (hidden
  896, 24 layers, 14 heads / 2 KV heads, vocabulary 151,936, tied embeddings) behind a CLIP
  ViT-L/14 tower at 336 px (576 image tokens) - in bf16, LoRA r128 on the language model,
  gradient checkpointing (the paper's settings), 16 pairs a step (~21k tokens). ``WeightedDPOTrainer``
  (half of the pairs visual: the rejected side on a noised image) against TRL's ``DPOTrainer``
  (text pairs, the chosen image), each in its own process (peak memory is per process),
  alternating; step time = median over the steps after warm-up; tokens/s = TRL's own count of
  attention-mask tokens (chosen + rejected rows). MFU = 6N FLOPs per token (policy forward 2N,
  backward through the frozen base 2N, reference forward 2N; N = the language model's
  non-embedding weights) x tokens/s over the card's dense bf16 peak; HFU adds the recomputed
  forward of gradient checkpointing (8N). Tokenizer and processor come from ``models/tiny/``
  (token ids stay inside the big vocabulary).
* **SAM**: segment_anything's ``build_sam_vit_b(checkpoint=None)``, image encoder only, 1024 px, fp32
  and bf16 autocast: images/s (the localize stage's cost per image).
* **Noise**: the noise stage's arithmetic (``tasks.noise.diffusion.noise_array``, NumPy, one CPU thread,
  what a shard runs) against the same arithmetic in torch on the GPU, batched, with the host <->
  device copies. Throughput only: torch's RNG is not NumPy's, so moving the stage to the GPU would
  change every noised image (and so every set version).

The GPU machine has torch but not this project's pure-Python dependencies: they travel as wheels
(bench/README.md). It has no Prefect either, which ``tasks.store`` imports; ``tasks.noise.diffusion``
needs only its ``content_hash``, so when Prefect is missing that one module is loaded on its own.
A section that fails prints its error as a row and the others still run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Sizes:
    hidden: int = 896
    layers: int = 24
    heads: int = 14
    kv_heads: int = 2
    intermediate: int = 4864
    vocab: int = 151_936
    # CLIP ViT-L/14 at 336 px, LLaVA-Med v1.5's tower: 576 image tokens a row.
    v_hidden: int = 1024
    v_layers: int = 24
    v_heads: int = 16
    v_intermediate: int = 4096
    image: int = 336
    patch: int = 14
    pairs: int = 16  # per optimizer step (one micro-batch): ~21k tokens, enough to keep an H100 busy
    answer_repeat: int = 6  # answers repeated to report-sentence lengths (~60-100 tokens)
    steps: int = 14
    warmup: int = 4
    repeats: int = 2
    sam_batch: int = 8
    sam_iters: int = 10
    sam_side: int = 1024
    noise_images: int = 64
    noise_side: int = 1024


SMOKE = Sizes(
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    intermediate=128,
    vocab=1024,
    v_hidden=32,
    v_layers=2,
    v_heads=2,
    v_intermediate=64,
    image=32,
    patch=8,
    pairs=2,
    answer_repeat=1,
    steps=3,
    warmup=1,
    repeats=1,
    sam_batch=1,
    sam_iters=2,
    sam_side=64,
    noise_images=4,
    noise_side=128,
)
Row = tuple[str, str, float, str]


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


# --- DPO step ------------------------------------------------------------------------------------


def build_llava(sizes: Sizes, work: Path):
    import torch
    from transformers import AutoProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config

    from models.tiny import build_tiny_llava

    # The tiny checkpoint lends its tokenizer, chat template and a processor sized for the big tower.
    folder = build_tiny_llava(work / "processor", seed=0, image_size=sizes.image, patch_size=sizes.patch)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    tiny = LlavaConfig.from_pretrained(folder)
    tokenizer = processor.tokenizer
    text = Qwen2Config(
        vocab_size=max(sizes.vocab, len(tokenizer)),
        hidden_size=sizes.hidden,
        intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.kv_heads,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=sizes.v_hidden,
        intermediate_size=sizes.v_intermediate,
        num_hidden_layers=sizes.v_layers,
        num_attention_heads=sizes.v_heads,
        image_size=sizes.image,
        patch_size=sizes.patch,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tiny.image_token_index,
        vision_feature_select_strategy=tiny.vision_feature_select_strategy,
        vision_feature_layer=tiny.vision_feature_layer,
        image_seq_length=(sizes.image // sizes.patch) ** 2,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device() == "cuda" else torch.float32
    with torch.device(device()):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def run_trainer(variant: str, sizes: Sizes, work: Path) -> dict:
    """One trainer's steps in this process: ``weighted`` (ours, text + visual pairs) or ``plain`` (TRL)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from models.dpo import WeightedDPOTrainer
    from models.pairs import ImagePairCollator, open_image, preference_example
    from tests.support.preference import preference_rows

    started = time.perf_counter()
    model, processor = build_llava(sizes, work)
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    # MFU's N: the language model's weights a token passes through (embeddings are a lookup).
    text = model.model.language_model
    flop_params = sum(p.numel() for p in text.parameters()) - text.embed_tokens.weight.numel()
    rows = preference_rows(work / "img", [1.25, 0.8, 1.0, 0.9, 1.1, 0.75, 1.2, 0.95])
    for row in rows:  # report-length answers; the images are resized by the processor
        row["chosen"] = " ".join([row["chosen"]] * sizes.answer_repeat)
        row["rejected"] = " ".join([row["rejected"]] * sizes.answer_repeat)
    rows = [dict(r) for r in rows for _ in range(max(1, 2 * sizes.pairs // len(rows)))]
    if variant == "weighted":
        fields = ("prompt", "chosen", "rejected", "chosen_image", "rejected_image", "weight", "pair_type")
        data = [preference_example(*(r[f] for f in fields)) for r in rows]
        trainer_class, extra = WeightedDPOTrainer, {"data_collator": ImagePairCollator(processor)}
    else:
        data = [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
                "image": open_image(r["chosen_image"]),
            }
            for r in rows
        ]
        trainer_class, extra = DPOTrainer, {}
    times: list[float] = []
    tokens: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.start, self.tokens = time.perf_counter(), trainer._total_train_tokens

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            times.append(time.perf_counter() - self.start)
            tokens.append(trainer._total_train_tokens - self.tokens)

    on_gpu = device() == "cuda"
    args = DPOConfig(
        output_dir=str(work / "out"),
        per_device_train_batch_size=sizes.pairs,
        max_steps=sizes.steps,
        learning_rate=1e-5,
        remove_unused_columns=False,
        max_length=None,
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        use_cpu=not on_gpu,
        bf16=on_gpu,
        seed=0,
        disable_tqdm=True,
        gradient_checkpointing=True,
        dataloader_num_workers=0,
    )
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data),
        processing_class=processor,
        peft_config=LoraConfig(
            r=128,
            lora_alpha=256,
            lora_dropout=0.05,
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        ),
        callbacks=[Timer()],
        **extra,
    )
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed, counted = times[sizes.warmup :], tokens[sizes.warmup :]
    return {
        "variant": variant,
        "params_m": params / 1e6,
        "flop_params": flop_params,
        "build_s": build_s,
        "step_s": statistics.median(timed),
        "tokens_per_s": sum(counted) / sum(timed),
        "peak_gib": peak_gib(),
    }


def utilization(flop_params: int, tokens_per_s: float, peak_flops: float) -> tuple[float, float]:
    """(MFU, HFU) of a LoRA-DPO step. Model FLOPs per token: the policy's forward (2N), its backward
    through the frozen base - activation gradients only, no weight gradients (2N) - and the
    reference forward (2N): 6N, with N the non-embedding weights. Gradient checkpointing runs the
    policy forward again (2N more): counted as hardware FLOPs only."""
    return 6 * flop_params * tokens_per_s / peak_flops, 8 * flop_params * tokens_per_s / peak_flops


# Dense bf16 peak of the cards this runs on (NVIDIA's datasheets, SXM); --peak-tflops for others.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def card_peak() -> tuple[float, str]:
    """The card's peak FLOP/s and where the number comes from (NaN on an unknown card or the CPU)."""
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    for card, tflops in PEAK_TFLOPS.items():
        if card in name:
            return tflops * 1e12, f"{card} peak {tflops:.0f} TFLOP/s"
    return float("nan"), f"no peak known for {name}"


def bench_dpo(sizes: Sizes, smoke: bool, deadline: float) -> list[Row]:
    peak_flops, peak_name = card_peak()
    runs: dict[str, list[dict]] = {"plain": [], "weighted": []}
    for _ in range(sizes.repeats):
        for variant in runs:
            command = [sys.executable, __file__, "--one", variant] + (["--smoke"] if smoke else [])
            # What is left of the budget, less a minute for the SAM and noise sections.
            timeout = max(30.0, deadline - time.monotonic() - 60)
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                raise RuntimeError(f"{variant} trainer failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
            runs[variant].append(json.loads(lines[-1].removeprefix("RESULT ")))
    rows: list[Row] = []
    summary = {}
    for variant, results in runs.items():
        name = "WeightedDPOTrainer" if variant == "weighted" else "TRL DPOTrainer"
        step = statistics.median(r["step_s"] for r in results)
        speed = statistics.median(r["tokens_per_s"] for r in results)
        peak = max(r["peak_gib"] for r in results)
        summary[variant] = (step, speed, peak)
        dtype = "bf16" if device() == "cuda" else "fp32"
        setting = f"{results[0]['params_m']:.0f}M params {dtype}, {sizes.pairs} pairs/step, LoRA r128, grad ckpt"
        rows += [(name, setting, step, "s/step (median)"), (name, "", speed, "tokens/s"), (name, "", peak, "GiB peak")]
        mfu, hfu = utilization(results[0]["flop_params"], speed, peak_flops)
        rows += [(name, f"6N per token, N = {results[0]['flop_params'] / 1e6:.0f}M; {peak_name}", mfu, "MFU")]
        rows += [(name, "8N per token (recomputed policy forward)", hfu, "HFU")]
    (plain_step, plain_speed, plain_peak), (ours_step, ours_speed, ours_peak) = summary["plain"], summary["weighted"]
    rows.append(("weighted / plain", "step time", ours_step / plain_step, "x (goal <= 1.10)"))
    rows.append(("weighted / plain", "tokens/s", ours_speed / plain_speed, "x"))
    rows.append(("weighted / plain", "peak memory", ours_peak / plain_peak, "x (goal <= 1.05)"))
    return rows


# --- projector under bf16 ------------------------------------------------------------------------


def bench_projector(sizes: Sizes, smoke: bool, deadline: float) -> list[Row]:
    """The product's trainer on a tiny LLaVA loaded in bf16: 2 steps at the paper's projector lr
    (2e-5). Without fp32 master weights most projector weights would not move (half a bf16 ulp)."""
    import torch
    from safetensors.torch import load_file

    from models import vlm
    from models.dpo import dpo_arguments, make_trainer
    from models.tiny import build_tiny_llava
    from tasks.config import TrainConfig
    from tests.support.preference import preference_rows

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = build_tiny_llava(work / "tiny", seed=0)
        settings = TrainConfig(
            precision="bf16", learning_rate=1e-7, projector_lr=2e-5, scheduler="constant", warmup_ratio=0.0,
            max_steps=2, batch_size=2, gradient_accumulation=1, lora_r=4, lora_alpha=8, max_length=None,
            gradient_checkpointing=False, logging_steps=1, save_steps=100,
        )  # fmt: skip
        args = dpo_arguments(settings, str(work / "out"))
        place = torch.device(device())
        policy = vlm.load(folder, device=place, dtype=torch.bfloat16, move=False)
        start = {k: v.float() for k, v in policy.model.state_dict().items() if "multi_modal_projector" in k}
        rows = preference_rows(work / "img")
        trainer = make_trainer(settings, args, policy.model, None, policy.processor, rows)
        trainer.train()
        trainer.model.save_pretrained(work / "adapter")
        saved = load_file(work / "adapter/adapter_model.safetensors")
    moved = total = 0
    for name, value in saved.items():
        if "multi_modal_projector" in name:
            before = next(v for k, v in start.items() if k.endswith(name.split("multi_modal_projector")[1]))
            moved += int((value.float().cpu() != before.cpu()).sum())
            total += value.numel()
    share = moved / total
    if share < 0.9:
        raise AssertionError(f"only {share:.2%} of the projector's weights moved in 2 bf16 steps at lr 2e-5")
    return [("projector, bf16 + fp32 masters", f"2 steps at lr 2e-5, {total} weights", share, "share moved")]


# --- SAM -----------------------------------------------------------------------------------------


def bench_sam(sizes: Sizes, smoke: bool, deadline: float) -> list[Row]:
    import torch

    if smoke:  # a SAM-shaped encoder small enough for the CPU
        from segment_anything.modeling import ImageEncoderViT

        encoder = ImageEncoderViT(
            img_size=sizes.sam_side,
            patch_size=16,
            embed_dim=32,
            depth=2,
            num_heads=2,
            out_chans=16,
            window_size=2,
            global_attn_indexes=(1,),
        )
        name = "SAM-shaped encoder (smoke)"
    else:
        from segment_anything import build_sam_vit_b

        encoder, name = build_sam_vit_b(checkpoint=None).image_encoder, "SAM vit_b image encoder"
    encoder = encoder.to(device()).eval()
    images = torch.randn(sizes.sam_batch, 3, sizes.sam_side, sizes.sam_side, device=device())
    rows: list[Row] = []
    for precision in ("fp32", "bf16"):
        autocast = torch.autocast(device_type=device(), dtype=torch.bfloat16, enabled=precision == "bf16")
        with torch.no_grad(), autocast:
            encoder(images)  # warm-up
            sync()
            if device() == "cuda":
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            for _ in range(sizes.sam_iters):
                encoder(images)
            sync()
            seconds = time.perf_counter() - started
        setting = f"{precision}, batch {sizes.sam_batch}, {sizes.sam_side} px, peak {peak_gib():.1f} GiB"
        rows.append((name, setting, sizes.sam_batch * sizes.sam_iters / seconds, "images/s"))
    return rows


# --- noise ---------------------------------------------------------------------------------------


def stage_noise():
    """``tasks.noise.diffusion`` (feather, noise_array); without Prefect, its one ``tasks.store`` need
    (``content_hash``) is loaded from ``tasks/store/keys.py`` alone."""
    try:
        import prefect  # noqa: F401
    except ImportError:
        spec = importlib.util.spec_from_file_location("tasks.store.keys", ROOT / "tasks/store/keys.py")
        keys = importlib.util.module_from_spec(spec)
        sys.modules["tasks.store.keys"] = keys
        spec.loader.exec_module(keys)
        store = types.ModuleType("tasks.store")
        store.content_hash = keys.content_hash
        sys.modules["tasks.store"] = store
        # The stage package's __init__ imports Prefect: only its diffusion module is needed.
        stage = types.ModuleType("tasks.noise")
        stage.__path__ = [str(ROOT / "tasks/noise")]
        sys.modules["tasks.noise"] = stage
    from tasks.config import NoiseConfig
    from tasks.config.noise import alpha_bar
    from tasks.noise.diffusion import feather, noise_array

    return feather, noise_array, NoiseConfig, alpha_bar


def noise_torch(batch, weights, abar: float, generator):
    """noise_array's arithmetic for same-size gray uint8 images on one device, blended everywhere
    (the weight is 0 outside the lesion, so this equals computing the lesion's window only)."""
    import torch

    x = batch.float()
    low = x.amin(dim=(1, 2), keepdim=True)
    high = x.amax(dim=(1, 2), keepdim=True)
    flat = high <= low
    low = torch.where(flat, torch.zeros_like(low), low)
    span = torch.where(flat, torch.full_like(high, 255.0), high - low)
    x0 = (x - low) * (2.0 / span) - 1.0
    eps = torch.randn(x0.shape, device=x0.device, generator=generator)
    xk = abar**0.5 * x0 + (1.0 - abar) ** 0.5 * eps
    xk = x0 + weights * (xk - x0)
    back = torch.round((xk.clamp(-1.0, 1.0) + 1.0) * (span / 2.0) + low).to(torch.uint8)
    return torch.where(weights > 0, back, batch)


def bench_noise(sizes: Sizes, smoke: bool, deadline: float) -> list[Row]:
    import torch

    feather, noise_array, NoiseConfig, alpha_bar = stage_noise()
    # minmax: 2v - 1 over the image's own range, the arithmetic noise_torch ports.
    config = NoiseConfig(space="minmax")
    n, side, abar = sizes.noise_images, sizes.noise_side, alpha_bar(config)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    images, masks = [], []
    for i in range(n):
        image = 120 + 60 * np.sin(xx / (3 + i % 7)) + 30 * np.cos(yy / 5) + rng.normal(0, 3, (side, side))
        images.append(image.clip(0, 255).astype(np.uint8))
        mask, size = np.zeros((side, side), bool), side // 3  # a lesion box of ~10% of the image
        row, col = (i * 37) % (side - size), (i * 53) % (side - size)
        mask[row : row + size, col : col + size] = True
        masks.append(mask)
    started = time.perf_counter()
    weights = [feather(mask, 8.0) for mask in masks]
    feather_s = time.perf_counter() - started
    started = time.perf_counter()
    reference = [noise_array(image, weight, config, i) for i, (image, weight) in enumerate(zip(images, weights))]
    numpy_s = time.perf_counter() - started
    rows: list[Row] = [
        ("noise: feather (scipy EDT)", f"NumPy, 1 CPU thread, {side} px", n / feather_s, "images/s"),
        ("noise: noise_array (the stage)", f"NumPy, 1 CPU thread, {side} px", n / numpy_s, "images/s"),
    ]
    host, host_weights = torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(weights))
    if device() == "cuda":
        host, host_weights = host.pin_memory(), host_weights.pin_memory()
    generator = torch.Generator(device=device()).manual_seed(0)
    for _ in range(2):  # the first: warm-up (allocator, kernels)
        sync()
        t0 = time.perf_counter()
        batch = host.to(device(), non_blocking=True)
        weight = host_weights.to(device(), non_blocking=True)
        sync()
        t1 = time.perf_counter()
        result = noise_torch(batch, weight, abar, generator)
        sync()
        t2 = time.perf_counter()
        back = result.cpu().numpy()
        t3 = time.perf_counter()
    rows.append(
        ("noise: torch port, with copies", f"torch {device()}, batch {n}, {side} px", n / (t3 - t0), "images/s")
    )
    rows.append(("noise: torch port, kernels only", f"torch {device()}", n / (t2 - t1), "images/s"))
    # The same arithmetic with another RNG: bit for bit outside the lesion, alike inside it.
    reference, inside = np.stack(reference), np.stack(masks)
    if not np.array_equal(back[~inside], reference[~inside]):
        raise AssertionError("the torch port changed pixels outside the lesion")
    drift = abs(float(back[inside].mean()) - float(reference[inside].mean()))
    rows.append(("noise: torch vs NumPy inside the lesion", "mean gray level, same abar", drift, "levels apart"))
    return rows


# --- main ----------------------------------------------------------------------------------------


def environment() -> str:
    import torch

    versions = []
    for name in ("transformers", "trl", "peft", "accelerate", "datasets", "pyarrow", "segment-anything", "pydantic"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:  # the sections that need it fail and say so
            versions.append(f"{name} MISSING")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU)"
    return f"{gpu}; Python {sys.version.split()[0]}, torch {torch.__version__}; " + ", ".join(versions)


SECTIONS = {"projector": bench_projector, "dpo": bench_dpo, "sam": bench_sam, "noise": bench_noise}


def main(argv: list[str] | None = None) -> int:
    """Print the table; 1 when a section failed (its row says why), so a caller cannot miss it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU): checks the script, not the numbers")
    parser.add_argument("--only", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("--budget", type=float, default=420, help="seconds the whole run may take (about)")
    parser.add_argument("--one", choices=["weighted", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print("RESULT " + json.dumps(run_trainer(args.one, sizes, Path(tmp))), flush=True)
        return 0

    started = time.perf_counter()
    deadline = time.monotonic() + args.budget
    about = environment()
    print(about, flush=True)
    rows: list[Row] = []
    for name in args.only:
        section_start = time.perf_counter()
        try:
            rows += SECTIONS[name](sizes, args.smoke, deadline)
        except Exception as exc:  # noqa: BLE001 - one section's failure must not lose the others' numbers
            traceback.print_exc()
            rows.append((f"{name}: FAILED", f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}", float("nan"), ""))
        print(f"{name}: {time.perf_counter() - section_start:.0f} s", flush=True)

    print(f"\n{about}\n{'smoke' if args.smoke else 'full'} sizes; {time.perf_counter() - started:.0f} s in all\n")
    print(f"| {'what':<42} | {'setting':<62} | {'value':>10} | unit |")
    print(f"|{'-' * 44}|{'-' * 64}|{'-' * 11}:|------|")
    for what, setting, value, unit in rows:
        print(f"| {what:<42} | {setting:<62} | {value:>10.4g} | {unit} |")
    if args.json:
        args.json.write_text(json.dumps({"environment": about, "sizes": asdict(sizes), "rows": rows}, indent=1))
    failed = [what for what, *_ in rows if what.endswith("FAILED")]
    if failed:
        print(f"\n{len(failed)} section(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
