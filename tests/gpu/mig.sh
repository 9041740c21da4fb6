# shellcheck shell=bash disable=SC2154
# GPU tier, sourced by tests/gpu/run.sh in place of its other checks when GPU 0 is already in
# MIG mode (a MIG GPU has no software slices): mode mig on the real driver, with instances (this tier never changes a GPU's settings: it reads instances
# only). `generate` publishes one device per MIG device `nvidia-smi -L` lists for GPU 0, and a
# process given the first one's MIG UUID (as the spec gives it) sees that one device. Uses
# run.sh's pass, fail, skip, field, $work, $bin and $root.

mig_checks() {
    local out migs first count devices driver probe=""
    if [ "$(nvidia-smi --query-gpu=mig.mode.current --format=csv,noheader -i 0 2>/dev/null | tr -d ' ')" != Enabled ]; then
        skip "mode mig" "GPU 0 is not in MIG mode (never changed here)"
        return
    fi
    # The MIG devices of GPU 0: the "  MIG …  (UUID: MIG-…)" lines after "GPU 0:".
    migs=$(nvidia-smi -L | awk '/^GPU / {g = ($2 == "0:")} g && /UUID: MIG-/ {sub(/.*UUID: /, ""); sub(/\).*/, ""); print}')
    if [ -z "$migs" ]; then
        skip "mode mig" "GPU 0 is in MIG mode without instances (none are created here)"
        return
    fi
    count=$(printf '%s\n' "$migs" | wc -l)
    first=$(printf '%s\n' "$migs" | head -n1)
    mkdir -p "$work/host/mignode" "$work/mig-cdi"
    cat >"$work/mig.toml" <<TOML
state_dir = "$work/host/mignode"
spec_dir = "$work/mig-cdi"
[[gpu]]
index = 0
mode = "mig"
TOML
    if ! out=$("$bin/gpuslice-cdi" generate --config "$work/mig.toml" 2>&1); then
        fail "mode mig: generate" "$out"
        return
    fi
    devices=$(grep -cE '^ *(- )?name: mig0-' "$work/mig-cdi/"*.yaml)
    if [ "$devices" = "$count" ] && grep -q "CUDA_VISIBLE_DEVICES=$first" "$work/mig-cdi/"*.yaml; then
        pass "mode mig: one device per MIG device ($count)"
    else
        fail "mode mig: the spec's MIG devices" "nvidia-smi -L: $count; spec: $devices"$'\n'"$(cat "$work/mig-cdi/"*.yaml)"
    fi
    driver=$(ldconfig -p | awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}')
    if [ -n "$driver" ] && bash "$root/tests/cuda-probe/build.sh" "$work/probe" "$(dirname "$driver")" >/dev/null 2>&1; then
        probe=$work/probe/cuda-probe
    else
        skip "mode mig: CUDA on a MIG device" "the CUDA probe did not build against ${driver:-no libcuda.so.1 in ldconfig}"
        return
    fi
    out=$(CUDA_VISIBLE_DEVICES=$first "$probe" info 2>&1)
    if [ "$(field "$out" device_count)" = 1 ] && [ -n "$(field "$out" total_mem)" ]; then
        pass "mode mig: CUDA sees one device ($(field "$out" name), $(field "$out" total_mem) bytes)"
    else
        fail "mode mig: CUDA on $first" "$out"
    fi
}

mig_checks
