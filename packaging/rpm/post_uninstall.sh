# gpuslice %postun: on erase remove the slice state (RPM has no separate purge; %post
# writes the spec again on an upgrade). Idempotent.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 0 ]; then
    rm -rf /run/gpuslice
fi
exit 0
