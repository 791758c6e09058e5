#!/usr/bin/env bash
# The reproduction on a remote GPU machine reached through capped transfers (see
# docs/gpu-campaign.md). Steps, each run from the project's root:
#
#   here:   python scripts/pack_data.py ROOT --out .pack --lossy train=webp:90 ...
#   there:  scripts/gpu-campaign.sh setup [WHEELS_DIR] [PACK_DIR]   # once per transfer
#   there:  scripts/gpu-campaign.sh smoke                           # every step, phantom
#   there:  scripts/gpu-campaign.sh run OUT [SECONDS]               # the campaign
#   here:   scripts/gpu-campaign.sh collect OUT                     # records into results/gpu
#
# `setup` installs wheels carried along (no index) and unpacks whichever data parts came
# with this transfer; `run` checks the data against the manifest, trains the plan
# (KOA_PLAN, default table5) for at most SECONDS, selects the checkpoint to ship on
# validation, and leaves in OUT records.tar.gz (every record, the Table 5 answer, the
# selection, the log), the exported checkpoint's sidecar and the checkpoint in parts of
# 15 MiB, and checks that OUT holds at most 8 files of at most 16 MiB each (what one
# transfer brings back; a fp32 export of the dual model is four parts). KOA_PLAN may name
# several plans, run in order under the
# one time limit, each as PLAN or PLAN:RUN,RUN (only those runs); KOA_SET holds extra
# section.key=value settings for every run (space-separated); KOA_DATA_COPY names the copy
# of the images the pack holds, written into every record (koa campaign --data-copy;
# default: original); KOA_BENCH=1 runs `koa bench --compile` first, in the same call, so
# the campaign's rate has its yardstick. KOA_SIZE=1 sizes each plan to the seconds left
# before it trains (koa campaign --size: a timed probe of a dual- and a single-stream run,
# the seconds per run, the runs that fit, written to records/sizing-PLAN.json) and trains
# only the runs that fit. KOA_SELECT_GROUP ships the best run of one plan row only (koa
# select --group, e.g. proposed); KOA_EXPORT_DTYPE is the export's dtype (bf16, or fp32
# where its parts fit). `collect` puts the records under results/ and
# joins the checkpoint. Nothing of this reads the held-out test split.
set -euo pipefail
cmd=${1:?usage: gpu-campaign.sh setup|run|collect ...}
shift
DATA=${KOA_DATA:-/tmp/koa-data}
WORK=${KOA_WORK:-/tmp/koa-work}
PLAN=${KOA_PLAN:-table5}
COPY=${KOA_DATA_COPY:-original}  # the copy of the images in the pack (koa campaign --data-copy)
PY=${PYTHON:-python3}
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

case "$cmd" in
setup)
    wheels=${1:-}
    pack=${2:-.pack}
    if [ -n "$wheels" ] && compgen -G "$wheels/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" "$wheels"/*.whl
    fi
    mkdir -p "$DATA"
    "$PY" scripts/pack_data.py --unpack "$pack" "$DATA"
    cp "$pack/MANIFEST.json" "$DATA/MANIFEST.json"
    echo "setup: $(find "$DATA" -type f | wc -l) files under $DATA"
    ;;
smoke)
    # the campaign's every step on a small synthetic phantom (two short runs): a check of
    # the machine and the code before the real campaign spends its time
    rm -rf "$WORK/smoke"
    "$PY" -m koa_core.cli campaign rehearsal --runs "$WORK/smoke/runs" \
        --records "$WORK/smoke/records" --only proposed-s1 --only clahe-s1 \
        --data-encoding "synthetic phantom"
    if [ -n "${KOA_SMOKE_PLAN:-}" ]; then  # e.g. recipe-rehearsal: the real plan's settings
        "$PY" -m koa_core.cli campaign "$KOA_SMOKE_PLAN" --runs "$WORK/smoke/runs" \
            --records "$WORK/smoke/records" --data-encoding "synthetic phantom" \
            ${KOA_SMOKE_ONLY:+--only "$KOA_SMOKE_ONLY"}
    fi
    "$PY" -m koa_core.cli select "$WORK/smoke/records" --min-recall 0
    "$PY" -m koa_core.cli export "$WORK/smoke/runs/proposed-s1" \
        --out "$WORK/smoke/ship/selected.safetensors" --dataset "synthetic phantom"
    echo "smoke: ok"
    ;;
run)
    out=${1:?usage: gpu-campaign.sh run OUT [SECONDS]}
    limit=${2:-480}
    mkdir -p "$out" "$WORK/records"
    log="$WORK/records/campaign.log"
    "$PY" scripts/pack_data.py --verify "$DATA" "$DATA/MANIFEST.json" | tee -a "$log"
    encoding=$("$PY" -c "import json,sys; m=json.load(open(sys.argv[1]))['encoding']; \
print('; '.join(f'{k}: {v}' for k, v in m.items()))" "$DATA/MANIFEST.json")
    (nvidia-smi -L || true) | tee -a "$log"
    echo "data: copy $COPY; $encoding" | tee -a "$log"
    start=$(date +%s)
    if [ -n "${KOA_BENCH:-}" ]; then  # the compiled model's own rate, same call, same GPU
        # shellcheck disable=SC2086  # KOA_BENCH_ARGS is a list of options
        "$PY" -m koa_core.cli bench --data "$DATA" \
            ${KOA_BENCH_ARGS:---images 6604 --batch 256 --steps 10 --workers 12} --compile \
            --save "$WORK/records/bench-gpu.json" 2>&1 | tee -a "$log" \
            || echo "bench failed" | tee -a "$log"
    fi
    extra=()
    for s in ${KOA_SET:-}; do extra+=(--set "$s"); done
    for spec in $PLAN; do
        plan=${spec%%:*}
        only=()
        if [ "$plan" != "$spec" ]; then
            IFS=, read -r -a names <<< "${spec#*:}"
            for n in "${names[@]}"; do only+=(--only "$n"); done
        fi
        size=()  # the sizing step: seconds per run measured here, only the runs that fit
        if [ -n "${KOA_SIZE:-}" ]; then
            size=(--size "$WORK/records/sizing-$(basename "$plan" .yaml).json")
        fi
        left=$(( limit - ($(date +%s) - start) ))
        if [ "$left" -le 30 ]; then echo "no time left for $spec" | tee -a "$log"; break; fi
        set +e
        "$PY" -m koa_core.cli campaign "$plan" --data "$DATA" --runs "$WORK/runs" \
            --records "$WORK/records/runs" --time-limit "$left" --data-encoding "$encoding" \
            --data-copy "$COPY" \
            ${KOA_DATA_NAME:+--data-name "$KOA_DATA_NAME"} "${only[@]}" "${extra[@]}" \
            "${size[@]}" 2>&1 | tee -a "$log"
        status=${PIPESTATUS[0]}
        set -e
        echo "campaign $spec exit status $status" | tee -a "$log"
    done
    if "$PY" -m koa_core.cli ablation "$WORK/records/runs" --json > "$WORK/records/ablation.json"
    then "$PY" -m koa_core.cli ablation "$WORK/records/runs" | tee -a "$log"; fi
    if "$PY" -m koa_core.cli select "$WORK/records/runs" --min-recall "${KOA_MIN_RECALL:-0.3}" \
        ${KOA_SELECT_GROUP:+--group "$KOA_SELECT_GROUP"} --json > "$WORK/records/selection.json"
    then
        name=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['name'])" \
            "$WORK/records/selection.json")
        mkdir -p "$WORK/ship"
        "$PY" -m koa_core.cli export "$WORK/runs/$name" --out "$WORK/ship/selected.safetensors" \
            --dtype "${KOA_EXPORT_DTYPE:-bf16}" --dataset "${KOA_DATA_NAME:-the dataset under $DATA}; copy $COPY; $encoding" \
            --note "selected on validation: $(cat "$WORK/records/selection.json" | tr -d '\n')"
        cp "$WORK/ship/selected.json" "$out/selected.json"
        split -b 15m -d "$WORK/ship/selected.safetensors" "$out/selected.safetensors.part"
    else
        rm -f "$WORK/records/selection.json"
        echo "no run qualifies for shipping" | tee -a "$log"
    fi
    tar -czf "$out/records.tar.gz" -C "$WORK" records
    ls -la "$out"
    # what one transfer brings back: at most 8 files of at most 16 MiB each
    n=$(find "$out" -type f | wc -l)
    big=$(find "$out" -type f -size +16M | wc -l)
    if [ "$n" -gt 8 ] || [ "$big" -gt 0 ]; then
        echo "OUT: $n files, $big over 16 MiB: more than one transfer brings back" >&2
        exit 4
    fi
    echo "OUT: $n files, none over 16 MiB"
    ;;
collect)
    src=${1:?usage: gpu-campaign.sh collect OUT [DEST] [CHECKPOINT_DIR]}
    dest=${2:-results/gpu}
    ckpt=${3:-runs/gpu-selected}  # weights never go under results/
    mkdir -p "$dest"
    incoming=$(mktemp -d)
    tar -xzf "$src/records.tar.gz" -C "$incoming" --strip-components=1
    # one folder, one copy of the images: records of another copy never replace or join
    # those already there (their run names are the same)
    if ! "$PY" - "$incoming" "$dest" <<'EOF'
import json, sys
from pathlib import Path
def copies(root):
    return {json.loads(p.read_text()).get("data", {}).get("copy") or "not named"
            for p in Path(root).rglob("provenance.json")}
new, old = copies(sys.argv[1]), copies(sys.argv[2])
if old and new and len(new | old) > 1:
    sys.exit(f"collect: {sys.argv[2]} holds records of the copy {', '.join(sorted(old))}, "
             f"these are of {', '.join(sorted(new))}: collect them into another folder")
EOF
    then
        rm -rf "$incoming"
        exit 2
    fi
    cp -R "$incoming"/. "$dest"/
    rm -rf "$incoming"
    if compgen -G "$src/selected.safetensors.part*" >/dev/null; then
        mkdir -p "$ckpt"
        cat "$src"/selected.safetensors.part* > "$ckpt/selected.safetensors"
        cp "$src/selected.json" "$ckpt/selected.json"
    fi
    echo "collect: $(find "$dest" -name provenance.json | wc -l) records in $dest"
    ;;
*)
    echo "usage: gpu-campaign.sh setup|run|collect ..." >&2
    exit 2
    ;;
esac
