# %post of the pecora .rpm: directories with their owners and modes (packaging/README.md),
# and systemd told about the unit. pecora is neither enabled nor started here (a fresh
# install has no signing key); on upgrade ($1 = 2) a running pecora is restarted.
own_dir() {
    mkdir -p "$1" && chown "$2:$3" "$1" && chmod "$4" "$1"
}
own_dir /etc/pecora root pecora 0750
chown root:pecora /etc/pecora/pecora.toml
chmod 0640 /etc/pecora/pecora.toml
own_dir /var/lib/pecora pecora pecora 0750
own_dir /var/lib/pecora/checkpoints pecora pecora 0750
own_dir /var/spool/pecora pecora pecora-delivery 0750
own_dir /var/spool/pecora/tmp pecora pecora 0700
for d in /var/spool/pecora/delivered /var/spool/pecora/delivered/tmp \
         /var/spool/pecora/delivered/new /var/spool/pecora/delivered/bad; do
    own_dir "$d" pecora pecora-delivery 2770
done
# The milter socket's directory, in Postfix's queue directory (chrooted daemons reach it
# too): set-group-id of Postfix's group, so the 0660 socket is Postfix's and nobody else's.
queue_dir=/var/spool/postfix
pf_group=postfix
if command -v postconf >/dev/null 2>&1; then
    queue_dir=$(postconf -h queue_directory 2>/dev/null || echo /var/spool/postfix)
    pf_owner=$(postconf -h mail_owner 2>/dev/null || echo postfix)
    pf_group=$(id -gn "$pf_owner" 2>/dev/null || echo postfix)
fi
if [ -d "$queue_dir" ] && getent group "$pf_group" >/dev/null; then
    own_dir "$queue_dir/pecora" pecora "$pf_group" 2750
fi
# Postfix's logging is never changed here (a host logging to /var/log/maillog keeps it);
# the acceptance hold needs [postfix] maillog, which `pecora setup postfix --apply` sets.
if ! grep -q '^[[:space:]]*maillog[[:space:]]*=' /etc/pecora/pecora.toml 2>/dev/null; then
    echo "pecora: [postfix] maillog is not set: run pecora setup postfix --apply (then postfix reload) so acceptance receipts wait until Postfix queued the message; pecora doctor checks it."
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 2 ] 2>/dev/null; then
        systemctl try-restart pecora.service >/dev/null 2>&1 || :
    fi
fi
exit 0
