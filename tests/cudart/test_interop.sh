# shellcheck shell=bash
# GL and VDPAU interop contexts (cuGLCtxCreate, cuVDPAUCtxCreate) through NVIDIA's runtime
# (cudaGetDriverEntryPointByVersion), each variant at a version that selects it, in the 1 GiB
# slice of test_limits.sh (limits_node): each takes a context's memory, so three fit beside the
# primary context and the fourth is refused with CUDA_ERROR_OUT_OF_MEMORY; cuCtxDestroy gives
# them back. interop-check.c, built here against each runtime.

# interop_build: $INTEROP, interop-check built against runtime $RT beside $CHECK.
interop_build() {
    local dir root inc flags=() d
    dir=$(dirname "${CHECK:?}")
    INTEROP=$dir/interop-check
    [[ -x $INTEROP ]] && return 0
    root=$CUDART_CACHE/$RT
    IFS=: read -ra inc <<<"$(cudart_field "$RT" 3)"
    for d in "${inc[@]}"; do flags+=(-I "$root/$d"); done
    # '$ORIGIN' is for the loader, not the shell.
    # shellcheck disable=SC2016
    gcc -std=c11 -O2 -Wall -Wextra -Werror "${flags[@]}" "$CUDART_DIR/interop-check.c" \
        "$dir/$(basename "$(cudart_field "$RT" 2)")" -Xlinker -rpath -Xlinker '$ORIGIN' -o "$INTEROP" ||
        fail "building interop-check against $RT failed"
}

# interop_in_slice ARGS...: interop-check ARGS on device 1, in the 1 GiB slice.
interop_in_slice() { PROG=$INTEROP cudart_in_slice small "$@" --device 1; }

test_interop_slice_contexts() {
    local out kind version
    interop_build
    limits_node
    for kind in gl:2000 gl:3020 vdpau:3010 vdpau:3020; do
        IFS=: read -r kind version <<<"$kind"
        run_ok "$kind at $version in the slice" out interop_in_slice "$kind" --version "$version"
        assert_eq "$kind at $version: contexts created" "$(kv created "$out")" 3
        assert_eq "$kind at $version: the next one" "$(kv cu_error "$out")" 2
        assert_eq "$kind at $version: free memory with them" "$(kv free_full "$out")" 0
        assert_eq "$kind at $version: free memory after cuCtxDestroy" "$(kv free_destroyed "$out")" "$(kv free_before "$out")"
    done
}
