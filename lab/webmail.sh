# lab/webmail.sh: sourced by lab/up. The lab's webmail: Roundcube 1.6 from Debian's packages,
# one HTTPS site per provider (its own port), served by an nginx and a php-fpm of this lab
# only (their own configuration, pid files, sockets and logs under DIR/webmail; lab/down
# stops them). Each site reads its provider's mail over IMAPS and sends over submission
# with STARTTLS and SASL, both verified against the lab CA, with the pecora plugin of this
# repository. The Roundcube and nginx settings are the shipped fragments under webmail/.

# The web server's user: it runs `pecora verify`, and must never read a signing key.
WEBMAIL_USER=www-data

# A Roundcube install tree of this lab: Debian's program files, skins and plugins by link,
# plus this repository's plugin, and a front controller that names this tree.
webmail_tree() {
    local rc="$1/rc" p
    rm -rf "$rc"
    mkdir -p "$rc/plugins" "$rc/skins" "$rc/public_html/program"
    ln -s /usr/share/roundcube/program "$rc/program"
    ln -s /usr/share/roundcube/SQL "$rc/SQL"
    ln -s /usr/share/roundcube/index.php "$rc/index.php"
    for p in /usr/share/roundcube/skins/*; do ln -s "$p" "$rc/skins/"; done
    for p in /usr/share/roundcube/plugins/*; do ln -s "$p" "$rc/plugins/"; done
    ln -s "$REPO/webmail/roundcube/pecora" "$rc/plugins/pecora"
    ln -s ../plugins "$rc/public_html/plugins"
    ln -s ../skins "$rc/public_html/skins"
    ln -s /usr/share/roundcube/program/js "$rc/public_html/program/js"
    ln -s /usr/share/roundcube/program/resources "$rc/public_html/program/resources"
    # Debian's public_html/index.php finds the tree from its own (resolved) place: this one
    # names the lab's tree.
    printf "<?php\ndefine('INSTALL_PATH', '%s/');\ninclude INSTALL_PATH . 'index.php';\n" "$rc" > "$rc/public_html/index.php"
}

# One provider's Roundcube configuration directory, database, temp and log directories.
webmail_site() { # name
    local n=$1 s="$DIR/webmail/$1"
    mkdir -p "$s/config" "$s/temp" "$s/logs"
    ln -sf /etc/roundcube/defaults.inc.php "$s/config/defaults.inc.php"
    ln -sf /etc/roundcube/mimetypes.php "$s/config/mimetypes.php"
    {
        echo "<?php"
        echo "// pecora lab: the webmail of $n (${DOMAIN[$n]}). The lab's own settings, then the shipped fragment."
        echo "\$config = [];"
        echo "\$config['db_dsnw'] = 'sqlite:///$s/roundcube.db?mode=0640';"
        echo "\$config['temp_dir'] = '$s/temp/';"
        echo "\$config['log_dir'] = '$s/logs/';"
        echo "\$config['des_key'] = '$(head -c 18 /dev/urandom | base64)';"
        echo "\$config['plugins'] = [];"
        LAB_IMAP_HOST="ssl://localhost:${IMAPS[$n]}" LAB_SMTP_HOST="tls://localhost:${SUBM[$n]}" \
        LAB_TLS_PEER_NAME=localhost LAB_TLS_CA="$CA/ca.pem" LAB_PECORA_BIN="$PECORA" \
        LAB_PECORA_INDEX="$DIR/$n/index.ldif" LAB_PRODUCT_NAME="${PNAME[$n]} - Webmail PEC" \
            render "$REPO/webmail/roundcube/config.inc.php.in" | sed 1d
    } > "$s/config/config.inc.php"
    rm -f "$s/roundcube.db"
    sqlite3 "$s/roundcube.db" < /usr/share/roundcube/SQL/sqlite.initial.sql || fail "cannot create the webmail database of $n"
    chown -R "$WEBMAIL_USER:" "$s"
    chown -R root: "$s/config"
    chmod 755 "$s/config"
}

webmail_setup() {
    local w="$DIR/webmail" n
    mkdir -p "$w/tmp"
    # The fragment includes nginx's stock FastCGI parameters, relative to the configuration.
    ln -sf /etc/nginx/fastcgi_params "$w/fastcgi_params"
    webmail_tree "$w"
    for n in alpha beta; do webmail_site "$n"; done
    # php-fpm: one pool per provider, each reading its own Roundcube configuration.
    {
        printf '; pecora lab: php-fpm of this lab only.\n[global]\npid = %s/php-fpm.pid\nerror_log = %s/php-fpm.log\ndaemonize = yes\n' "$w" "$w"
        for n in alpha beta; do
            printf '[%s]\nuser = %s\ngroup = %s\nlisten = %s\nlisten.owner = %s\nlisten.group = %s\nlisten.mode = 0660\n' \
                "$n" "$WEBMAIL_USER" "$WEBMAIL_USER" "$w/php-$n.sock" "$WEBMAIL_USER" "$WEBMAIL_USER"
            printf 'pm = ondemand\npm.max_children = 4\nenv[ROUNDCUBE_CONFIG_DIR] = %s\nenv[PATH] = /usr/bin:/bin\n' "$w/$n/config"
            printf 'php_admin_value[error_log] = %s\nphp_admin_flag[log_errors] = on\n' "$w/$n/logs/php.log"
            printf 'php_admin_value[upload_tmp_dir] = %s\nphp_admin_value[upload_max_filesize] = 40M\nphp_admin_value[post_max_size] = 45M\n' "$w/$n/temp"
        done
    } > "$w/php-fpm.conf"
    # nginx: the shipped server fragment once per provider, on the provider's webmail port.
    {
        printf '# pecora lab: nginx of this lab only.\nuser %s;\nworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/nginx-error.log;\n' \
            "$WEBMAIL_USER" "$w" "$w"
        printf 'events { worker_connections 64; }\nhttp {\n    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n'
        printf '    access_log %s/nginx-access.log;\n' "$w"
        for t in client_body proxy fastcgi uwsgi scgi; do printf '    %s_temp_path %s/tmp/%s;\n' "$t" "$w" "$t"; done
        for n in alpha beta; do
            LAB_LISTEN="127.0.0.1:${WEBMAIL[$n]}" LAB_SERVER_NAME=localhost \
            LAB_TLS_CERT="$CA/$n.tls.pem" LAB_TLS_KEY="$CA/$n.tls.key" \
            LAB_ROUNDCUBE_ROOT="$w/rc/public_html" LAB_PHP_FPM_SOCKET="$w/php-$n.sock" \
                render "$REPO/webmail/nginx/pecora-webmail.conf.in" | grep -v '^ *#' | grep -v '^$'
        done
        echo "}"
    } > "$w/nginx.conf"
    php-fpm8.2 --fpm-config "$w/php-fpm.conf" -t >"$w/php-fpm-check.err" 2>&1 \
        || fail "php-fpm configuration: $(tail -3 "$w/php-fpm-check.err")"
    nginx -p "$w" -c "$w/nginx.conf" -t >"$w/nginx-check.err" 2>&1 \
        || fail "nginx configuration: $(tail -3 "$w/nginx-check.err")"
}

webmail_start() {
    local w="$DIR/webmail"
    # Both daemonize and write their pid files; our stdout is not inherited.
    php-fpm8.2 --fpm-config "$w/php-fpm.conf" </dev/null >>"$w/php-fpm.log" 2>&1 || fail "php-fpm did not start"
    nginx -p "$w" -c "$w/nginx.conf" </dev/null >>"$w/nginx-error.log" 2>&1 || fail "nginx did not start"
}
