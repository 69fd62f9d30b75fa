# %pre of the pecora .rpm: the system user (group pecora, home /var/lib/pecora, no shell).
getent group pecora >/dev/null || groupadd --system pecora
if ! getent passwd pecora >/dev/null; then
    useradd --system --gid pecora --home-dir /var/lib/pecora --no-create-home \
        --shell /sbin/nologin --comment "pecora PEC daemon" pecora
fi
# pecora-delivery: the group of the delivery spool, which Dovecot's LMTP gets through
# mail_access_groups to run the hook; pecora joins it to read the hook's events.
getent group pecora-delivery >/dev/null || groupadd --system pecora-delivery
# postdrop: Postfix's public/ directory (injection socket).
for g in postdrop pecora-delivery; do
    if getent group "$g" >/dev/null; then
        usermod --append --groups "$g" pecora
    fi
done
# Not group mail (every local mailbox in /var/mail), which earlier packages added.
if id -nG pecora | tr ' ' '\n' | grep -qx mail; then
    gpasswd -d pecora mail >/dev/null 2>&1 || :
fi
exit 0
