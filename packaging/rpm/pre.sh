# %pre of the pecora .rpm: the system user (group pecora, home /var/lib/pecora, no shell).
getent group pecora >/dev/null || groupadd --system pecora
if ! getent passwd pecora >/dev/null; then
    useradd --system --gid pecora --home-dir /var/lib/pecora --no-create-home \
        --shell /sbin/nologin --comment "pecora PEC daemon" pecora
fi
# postdrop: Postfix's public/ directory (injection socket); mail: the delivery spool.
for g in postdrop mail; do
    if getent group "$g" >/dev/null; then
        usermod --append --groups "$g" pecora
    fi
done
exit 0
