# gpuslice %preun: on erase (not upgrade) stop and disable the units and delete the generated
# CDI spec. Idempotent.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now gpuslice.service gpuslice-generate.path gpuslice-generate.service >/dev/null 2>&1 || :
    # The device plugin, where an admin enabled it.
    systemctl --no-reload disable --now gpuslice-device-plugin.service >/dev/null 2>&1 || :
    spec_dir=$(sed -n 's/^[[:space:]]*spec_dir[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' \
        /etc/gpuslice/config.toml 2>/dev/null | tail -n 1)
    rm -f "${spec_dir:-/var/run/cdi}/gpuslice.yaml" "${spec_dir:-/var/run/cdi}/gpuslice.json" \
        /var/run/cdi/gpuslice.yaml
fi
exit 0
