#!/usr/bin/env bash
# The checks to run on a lent GPU, in one script: training throughput, FLOPs and MFU of every family's tiny and base
# sizes (benchmarks/bench_train.py, bf16, torch.compile), then vit_small trained on the CIFAR-10 images for about
# 5 minutes (stopped with SIGTERM, which checkpoints), then its 1- and 4-step sample grids from the EMA weights.
#
#   benchmarks/gpu_check.sh                       # writes to $OUT, else gpu_check_out/
#   benchmarks/gpu_check.sh --skip-train /tmp/a   # only the benchmark, into /tmp/a
#   benchmarks/gpu_check.sh --skip-bench --train-seconds 120
#   benchmarks/gpu_check.sh --smoke /tmp/smoke    # the same steps for seconds on CPU (tests/test_bench_train.py)
#
# Inputs: SPHERE_CIFAR_SUBSET (default ../shared/data/cifar10_train_subset.npz) and SPHERE_VGG_WEIGHTS (default
# ../shared/weights/vgg16_features_hed.pth; without it LPIPS is off and summary.txt says so). ConvNeXt-S is off
# (its weights are a download). Outputs: env.txt, bench_train.txt/.jsonl, train_log.txt, metrics.jsonl, the
# training's own grids (images/), samples/ (1- and 4-step grids), summary.txt; checkpoints are deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0 bench=1 train=1 train_seconds=300 out=""
models="vit_tiny convnet_tiny psvae_tiny vqvae_tiny ldm_ae_tiny ldm_tiny ddpm_tiny vit_small"
models+=" vit_base convnet_base psvae_base vqvae_base ldm_base"
while (($#)); do
    case "$1" in
        --smoke) smoke=1 ;;
        --skip-bench) bench=0 ;;
        --skip-train) train=0 ;;
        --train-seconds) train_seconds="$2"; shift ;;
        --models) models="$2"; shift ;;
        -*) echo "error: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
        *) out="$1" ;;
    esac
    shift
done
out="${out:-${OUT:-gpu_check_out}}"
data="${SPHERE_CIFAR_SUBSET:-../shared/data/cifar10_train_subset.npz}"
vgg="${SPHERE_VGG_WEIGHTS:-../shared/weights/vgg16_features_hed.pth}"
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"

if ((smoke)); then
    device=(--device cpu --threads 1)
    bench_flags=(--models vit_tiny --image_size 16 --batch_size 2 --iters 1 --warmup 0 --no-compile)
    train_flags=(--model_type vit_tiny --preset none --image_size 16 --batch_size 4 --epochs 1 --steps 2)
    train_flags+=(--eval_samples 4)
    sample_count=4
else
    device=(--device cuda)
    read -r -a model_list <<<"$models"
    bench_flags=(--models "${model_list[@]}" --compile)
    train_flags=(--model_type vit_small --preset paper --epochs 100000 --steps 500 --eval-frequency 1)
    train_flags+=(--fid-every 0 --checkpoint-frequency 100000)
    sample_count=64
fi
if [[ -f "$vgg" ]]; then
    perceptual=(--vgg_weights "$vgg")
    train_flags+=(--vgg_weights "$vgg")
else
    perceptual=(--no-perceptual)
    echo "LPIPS off: no VGG16 weights at $vgg (set SPHERE_VGG_WEIGHTS)" | tee -a "$summary"
    train_flags+=(--recon_perc_weight 0 --con_perc_weight 0)
fi
train_flags+=(--convnext_weight 0)

{
    date -u
    git log -1 --oneline 2>/dev/null || true
    python -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
} >"$out/env.txt" 2>&1

if ((bench)); then
    echo "== bench_train ($( ((smoke)) && echo smoke || echo "${models}"))" | tee -a "$summary"
    python benchmarks/bench_train.py "${device[@]}" "${bench_flags[@]}" "${perceptual[@]}" \
        --out "$out/bench_train.jsonl" 2>&1 | tee "$out/bench_train.txt"
    grep -v '^(' "$out/bench_train.txt" >>"$summary"
fi

if ((train)); then
    if [[ ! -f "$data" ]]; then
        echo "error: no CIFAR-10 images at $data: set SPHERE_CIFAR_SUBSET to the .npz (../shared/data)" >&2
        exit 1
    fi
    runs="$out/runs"
    rm -rf "$runs"
    echo "== training (${train_seconds}s at most) on $data" | tee -a "$summary"
    status=0
    # SIGTERM after train_seconds: the trainer checkpoints at the next step and exits (timeout then returns 124)
    timeout --signal=TERM --kill-after=180 "$train_seconds" python training.py --dataset "$data" \
        --results_dir "$runs" "${device[@]}" "${train_flags[@]}" >"$out/train_log.txt" 2>&1 || status=$?
    if ((status != 0 && status != 124)); then
        tail -20 "$out/train_log.txt" >&2
        echo "error: training failed (exit $status): see $out/train_log.txt" >&2
        exit 1
    fi
    run=$(find "$runs" -mindepth 1 -maxdepth 1 -type d | head -1)
    [[ -f "$run/metrics.jsonl" ]] && cp "$run/metrics.jsonl" "$out/metrics.jsonl"  # none before the first log
    [[ -f "$out/metrics.jsonl" ]] && { grep img_per_s "$out/metrics.jsonl" | tail -1 >>"$summary" || true; }
    cp -r "$run/images" "$out/images"
    python sampling.py --checkpoint "$run" "${device[@]}" --steps 1 4 --num_samples "$sample_count" \
        --dest_folder "$out/samples" | tee -a "$summary"
    grep -E "done \(step|PSNR|finished|stopp" "$out/train_log.txt" | tail -4 >>"$summary" || true
    rm -rf "$run/checkpoints"
fi
echo "== wrote $out" | tee -a "$summary"
