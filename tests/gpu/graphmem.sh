# shellcheck shell=bash disable=SC2154
# (SC2154: here, work and limit are run.sh's.)
# Sourced by tests/gpu/run.sh (which defines in_slice, field, pass, fail, skip, $work, $limit):
# graph memory and stream-ordered frees through NVIDIA's runtime in the 4 GiB slice, with
# tests/cudart/graphmem-check.c built by nvcc. Within the slice (3 GiB) an alloc node, a
# captured cudaMallocAsync and an instantiate that uploads work; past it (6 GiB) upload and
# launch are refused; cudaDeviceGraphMemTrim and cudaFreeAsync + cudaStreamSynchronize give the
# memory back.

graphmem_checks() {
    local prog=$work/graphmem-check out fits=$((limit * 3 / 4)) over=$((limit * 3 / 2))
    if ! nvcc -o "$prog" "$here/../cudart/graphmem-check.c" >"$work/graphmem-build.log" 2>&1; then
        fail "graphmem-check" "could not build: $(tail -n 5 "$work/graphmem-build.log")"
        return
    fi
    for how in node capture; do
        out=$(in_slice "$prog" "$how" "$fits" 2>&1)
        if [ "$(field "$out" launch)" = cudaSuccess ] && [ "$(field "$out" relaunch)" = cudaSuccess ] &&
            [ "$(field "$out" free_after_trim)" = "$(field "$out" free_before)" ]; then
            pass "graph memory ($how, 3 GiB) within the slice, given back by the trim"
        else
            fail "graph memory ($how, 3 GiB) within the slice" "$out"
        fi
        out=$(in_slice "$prog" "$how" "$over" 2>&1)
        if [ "$(field "$out" launch)" = cudaErrorMemoryAllocation ] &&
            [ "$(field "$out" free_after_trim)" = "$(field "$out" free_before)" ]; then
            pass "graph memory ($how, 6 GiB) past the slice refused at launch"
        else
            fail "graph memory ($how, 6 GiB) past the slice" "$out"
        fi
    done
    out=$(in_slice "$prog" node "$over" params 2>&1)
    if [ "$(field "$out" instantiate)" = cudaErrorMemoryAllocation ]; then
        pass "instantiate with upload of 6 GiB of graph memory refused"
    else
        fail "instantiate with upload" "$out"
    fi
    out=$(in_slice "$prog" trim "$fits" $((limit / 2)) 2>&1)
    if [ "$(field "$out" malloc_before_trim)" = cudaErrorMemoryAllocation ] &&
        [ "$(field "$out" malloc_after_trim)" = cudaSuccess ]; then
        pass "cudaDeviceGraphMemTrim gives graph memory back to the slice"
    else
        fail "cudaDeviceGraphMemTrim" "$out"
    fi
    out=$(in_slice "$prog" freeasync "$fits" 2>&1)
    if [ "$(field "$out" malloc_after_sync)" = cudaSuccess ]; then
        pass "cudaFreeAsync + cudaStreamSynchronize gives pool memory back to the slice"
    else
        fail "cudaFreeAsync + cudaStreamSynchronize" "$out"
    fi
}

if command -v nvcc >/dev/null 2>&1; then
    graphmem_checks
else
    skip "graph memory checks" "nvcc not found"
fi

# CuPy's graphs with an array allocated during the capture (MemoryAsyncPool: graph memory).
if python3 -c 'import cupy; cupy.cuda.runtime.getDeviceCount()' >/dev/null 2>&1; then
    out=$(in_slice python3 "$here/../cudart/cupy-graph-check.py" $((limit * 3 / 4)) 2>&1)
    if [ "$(field "$out" launch)" = ok ]; then
        pass "CuPy graph with 3 GiB of graph memory in the slice"
    else
        fail "CuPy graph within the slice" "$out"
    fi
    out=$(in_slice python3 "$here/../cudart/cupy-graph-check.py" $((limit * 3 / 2)) 2>&1)
    if [ "$(field "$out" upload)" = cudaErrorMemoryAllocation ] && [ "$(field "$out" launch)" = cudaErrorMemoryAllocation ]; then
        pass "CuPy graph with 6 GiB of graph memory refused at upload and launch"
    else
        fail "CuPy graph past the slice" "$out"
    fi
else
    skip "CuPy graph checks" "python3 cannot import cupy with a GPU"
fi
