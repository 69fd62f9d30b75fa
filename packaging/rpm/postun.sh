# %postun of the pecora .rpm. RPM has no purge: the registry (/var/lib/pecora), the spool
# and a changed configuration (saved as .rpmsave) are kept, and so is the pecora user.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
