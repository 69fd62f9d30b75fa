# %preun of the pecora .rpm: on erase ($1 = 0) stop and disable the service and the
# index-update timer.
if [ "$1" -eq 0 ] 2>/dev/null; then
    if [ -d /run/systemd/system ]; then
        systemctl stop pecora-index-update.timer pecora-index-update.service >/dev/null 2>&1 || :
        systemctl stop pecora.service >/dev/null 2>&1 || :
    fi
    systemctl --no-reload disable pecora-index-update.timer >/dev/null 2>&1 || :
    systemctl --no-reload disable pecora.service >/dev/null 2>&1 || :
fi
exit 0
