//! `pecora setup roundcube`: the webmail of a PEC point. The shipped Roundcube settings
//! (`webmail/roundcube/config.inc.php.in`) and nginx site (`webmail/nginx/pecora-webmail.conf.in`)
//! with their `@PLACEHOLDER@`s filled, printed (default) or written (`--apply`): the
//! settings as `ROUNDCUBE_DIR/pecora.inc.php`, included from Roundcube's config.inc.php;
//! the plugin linked into Roundcube's plugins directory; the site into nginx's
//! sites-available (enabling it and reloading stay the administrator's). Every file
//! changed is backed up first (`<file>.pecora-<time>`) and restored when `php -l` refuses
//! the result.
//!
//! Exit status: 0 printed or applied, 1 applied but the check failed (the previous files
//! were restored), 2 usage or environment error.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::fragments::{
    Values, Written, fragments_dir, placeholders, provenance, put_back, render, slot, strip_instructions, warn_missing_files,
    write_with_backup,
};
use crate::config::Config;

/// `pecora setup roundcube` options.
#[derive(Debug, Clone, clap::Args)]
pub struct RoundcubeArgs {
    /// Write the files instead of printing them (a backup of every file changed is kept).
    #[arg(long)]
    pub apply: bool,
    /// Directory holding the fragments (webmail/...) [default: /usr/share/pecora, else the
    /// source tree pecora was built from].
    #[arg(long, value_name = "DIR")]
    pub fragments: Option<PathBuf>,
    /// The mail host holders' clients connect to (Dovecot and Postfix submission), as named
    /// in its TLS certificate; the defaults of --imap-host, --smtp-host and --tls-peer-name.
    #[arg(long, value_name = "NAME")]
    pub mail_host: Option<String>,
    /// @IMAP_HOST@ [default: ssl://MAIL_HOST:993].
    #[arg(long, value_name = "URL")]
    pub imap_host: Option<String>,
    /// @SMTP_HOST@ [default: tls://MAIL_HOST:587, submission with STARTTLS].
    #[arg(long, value_name = "URL")]
    pub smtp_host: Option<String>,
    /// @TLS_PEER_NAME@: the name verified in Dovecot's and Postfix's certificate [default: MAIL_HOST].
    #[arg(long, value_name = "NAME")]
    pub tls_peer_name: Option<String>,
    /// @TLS_CA@: the CA bundle that verifies it [default: the system bundle].
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<String>,
    /// @PECORA_BIN@: the pecora the plugin runs `pecora verify` with.
    #[arg(long, value_name = "FILE", default_value = "/usr/bin/pecora")]
    pub pecora_bin: String,
    /// @PECORA_INDEX@: the provider index the verdicts use [default: pecora.toml index.file].
    #[arg(long, value_name = "FILE")]
    pub pecora_index: Option<String>,
    /// @PRODUCT_NAME@: the name on the login page [default: "<provider.name> - Webmail PEC"].
    #[arg(long, value_name = "TEXT")]
    pub product_name: Option<String>,
    /// @SERVER_NAME@: the webmail's host name.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// @LISTEN@: nginx's listen address and port.
    #[arg(long, value_name = "ADDRESS", default_value = "443")]
    pub listen: String,
    /// @TLS_CERT@: the webmail's TLS certificate (full chain, PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// @TLS_KEY@: its key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
    /// @ROUNDCUBE_ROOT@: Roundcube's public directory.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/roundcube/public_html")]
    pub roundcube_root: String,
    /// @PHP_FPM_SOCKET@: php-fpm's socket.
    #[arg(long, value_name = "PATH", default_value = "/run/php/php-fpm.sock")]
    pub php_fpm_socket: String,
    /// Roundcube's configuration directory: --apply writes pecora.inc.php there and includes
    /// it from its config.inc.php.
    #[arg(long, value_name = "DIR", default_value = "/etc/roundcube")]
    pub roundcube_dir: PathBuf,
    /// Roundcube's plugins directory: --apply links the plugin there as `pecora`.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/roundcube/plugins")]
    pub roundcube_plugins: PathBuf,
    /// The nginx site --apply writes.
    #[arg(long, value_name = "FILE", default_value = "/etc/nginx/sites-available/pecora-webmail")]
    pub nginx_site: PathBuf,
}

/// The fragments, relative to the fragments directory.
pub const ROUNDCUBE_FRAGMENT: &str = "webmail/roundcube/config.inc.php.in";
pub const NGINX_FRAGMENT: &str = "webmail/nginx/pecora-webmail.conf.in";
pub const PLUGIN_DIR: &str = "webmail/roundcube/pecora";

/// The placeholder values of both fragments.
pub fn roundcube_values(a: &RoundcubeArgs, config: Option<&Config>) -> Values {
    let system_ca = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .map(str::to_owned);
    let host = a.mail_host.clone();
    let mut v = Values::new();
    v.insert(
        "IMAP_HOST",
        slot(a.imap_host.clone().or_else(|| host.as_ref().map(|h| format!("ssl://{h}:993"))), "--imap-host or --mail-host"),
    );
    v.insert(
        "SMTP_HOST",
        slot(a.smtp_host.clone().or_else(|| host.as_ref().map(|h| format!("tls://{h}:587"))), "--smtp-host or --mail-host"),
    );
    v.insert("TLS_PEER_NAME", slot(a.tls_peer_name.clone().or(host), "--tls-peer-name or --mail-host"));
    v.insert("TLS_CA", slot(a.tls_ca.clone().or(system_ca), "--tls-ca"));
    v.insert("PECORA_BIN", slot(Some(a.pecora_bin.clone()), "--pecora-bin"));
    v.insert(
        "PECORA_INDEX",
        slot(
            a.pecora_index.clone().or_else(|| config.map(|c| c.index.file.display().to_string())),
            "--pecora-index (or index.file in pecora.toml)",
        ),
    );
    v.insert(
        "PRODUCT_NAME",
        slot(
            a.product_name.clone().or_else(|| config.map(|c| format!("{} - Webmail PEC", c.provider.name))),
            "--product-name (or provider.name in pecora.toml)",
        ),
    );
    v.insert("SERVER_NAME", slot(a.server_name.clone(), "--server-name"));
    v.insert("LISTEN", slot(Some(a.listen.clone()), "--listen"));
    v.insert("TLS_CERT", slot(a.tls_cert.clone(), "--tls-cert"));
    v.insert("TLS_KEY", slot(a.tls_key.clone(), "--tls-key"));
    v.insert("ROUNDCUBE_ROOT", slot(Some(a.roundcube_root.clone()), "--roundcube-root"));
    v.insert("PHP_FPM_SOCKET", slot(Some(a.php_fpm_socket.clone()), "--php-fpm-socket"));
    v
}

/// Values that would break out of their place: a PHP single-quoted string, or an nginx
/// token (no whitespace, quotes, braces or semicolons). Errors name each one.
fn unsafe_values(text: &str, values: &Values, nginx: bool) -> Vec<String> {
    let used: Vec<String> = placeholders(text).into_iter().map(|(n, _)| n).collect();
    let mut errors = Vec::new();
    for (name, s) in values {
        let Some(v) = &s.value else { continue };
        if !used.iter().any(|u| u == name) {
            continue;
        }
        let bad = if nginx {
            v.chars().any(|c| c.is_whitespace() || c.is_control() || "'\"\\;{}#$".contains(c))
        } else {
            v.chars().any(|c| c.is_control() || c == '\'' || c == '\\')
        };
        if bad {
            let msg = format!("@{name}@ = {v:?} cannot be written there safely (pass {} without quotes, backslashes{})",
                s.option, if nginx { ", spaces, braces or semicolons" } else { "" });
            if !errors.contains(&msg) {
                errors.push(msg);
            }
        }
    }
    errors
}

/// One rendered fragment: its leading instructions (comment lines naming the placeholders)
/// replaced by a header naming the source and the values used.
fn rendered(source: &Path, values: &Values, php: bool) -> Result<String, Vec<String>> {
    let text = std::fs::read_to_string(source).map_err(|e| vec![format!("{}: {e}", source.display())])?;
    let (first, rest) = if php { text.split_once('\n').unwrap_or((&text, "")) } else { ("", text.as_str()) };
    let comment = if php { "//" } else { "#" };
    let template = strip_instructions(rest, comment);
    let errors = unsafe_values(template, values, !php);
    if !errors.is_empty() {
        return Err(errors);
    }
    let body = render(template, values, source)?;
    let mut out = String::new();
    if php {
        out.push_str(first);
        out.push('\n');
    }
    out.push_str(&provenance(comment, "written", "pecora setup roundcube", source, values, template));
    out.push_str(&body);
    Ok(out)
}

/// Writes `text` to `target` (see [`write_with_backup`]), noting in `changed` what to put
/// back should a later step fail.
fn write_file(target: &Path, text: &str, changed: &mut Vec<(PathBuf, Option<PathBuf>)>) -> Result<(), String> {
    if let Written::Changed { backup } = write_with_backup(target, text)? {
        changed.push((target.to_path_buf(), backup));
    }
    Ok(())
}

/// Puts back what `write_file` changed.
fn restore(changed: &[(PathBuf, Option<PathBuf>)]) {
    for (target, backup) in changed.iter().rev() {
        match put_back(target, backup.as_deref()) {
            Ok(()) => println!("restored: {}", target.display()),
            Err(e) => eprintln!("pecora: cannot restore {}: {e}", target.display()),
        }
    }
}

/// `php -l FILE`: Ok, or what PHP said. Without php, Ok with a note.
fn php_lint(file: &Path) -> Result<(), String> {
    match Command::new("php").arg("-l").arg(file).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)).trim().to_string()),
        Err(_) => {
            println!("php not found: check {} with `php -l` once PHP is installed", file.display());
            Ok(())
        }
    }
}

/// Runs the command.
pub fn roundcube(a: &RoundcubeArgs, config: Option<&Config>) -> u8 {
    let fragments = match fragments_dir(a.fragments.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pecora: {e}");
            return 2;
        }
    };
    let values = roundcube_values(a, config);
    warn_missing_files(&values, &["TLS_CERT", "TLS_KEY", "TLS_CA", "PECORA_BIN", "PECORA_INDEX"]);
    let php = rendered(&fragments.join(ROUNDCUBE_FRAGMENT), &values, true);
    let site = rendered(&fragments.join(NGINX_FRAGMENT), &values, false);
    let (php, site) = match (php, site) {
        (Ok(p), Ok(s)) => (p, s),
        (p, s) => {
            let mut all = p.err().unwrap_or_default();
            for e in s.err().unwrap_or_default() {
                if !all.contains(&e) {
                    all.push(e);
                }
            }
            for e in all {
                eprintln!("pecora: {e}");
            }
            return 2;
        }
    };
    let plugin = fragments.join(PLUGIN_DIR);
    let settings = a.roundcube_dir.join("pecora.inc.php");
    if !a.apply {
        println!("// ---- {} (include it from {})", settings.display(), a.roundcube_dir.join("config.inc.php").display());
        print!("{php}");
        println!("# ---- {}", a.nginx_site.display());
        print!("{site}");
        println!("# ---- the plugin: link {} as {}", plugin.display(), a.roundcube_plugins.join("pecora").display());
        return 0;
    }

    let mut changed = Vec::new();
    let result = (|| -> Result<(), String> {
        write_file(&settings, &php, &mut changed)?;
        // Roundcube's own configuration includes ours, once.
        let main = a.roundcube_dir.join("config.inc.php");
        match std::fs::read_to_string(&main) {
            Ok(text) if text.contains("pecora.inc.php") => println!("{}: includes pecora.inc.php already", main.display()),
            Ok(text) => {
                let mut new = text.trim_end().to_string();
                if new.ends_with("?>") {
                    new.truncate(new.len() - 2);
                }
                new.push_str("\n\n// The webmail of the PEC point (pecora setup roundcube).\ninclude __DIR__ . '/pecora.inc.php';\n");
                write_file(&main, &new, &mut changed)?;
            }
            Err(_) => println!("{} does not exist: include {} from Roundcube's configuration", main.display(), settings.display()),
        }
        write_file(&a.nginx_site, &site, &mut changed)?;
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("pecora: {e}");
        restore(&changed);
        return 2;
    }
    for f in [a.roundcube_dir.join("config.inc.php"), settings.clone()] {
        if f.is_file()
            && let Err(e) = php_lint(&f)
        {
            eprintln!("pecora: {} does not pass php -l: {e}", f.display());
            restore(&changed);
            return 1;
        }
    }
    // The plugin, linked into Roundcube's plugins directory.
    let link = a.roundcube_plugins.join("pecora");
    if !a.roundcube_plugins.is_dir() {
        println!("{} does not exist: link {} there as pecora", a.roundcube_plugins.display(), plugin.display());
    } else if std::fs::read_link(&link).ok().as_deref() == Some(plugin.as_path()) {
        println!("{}: linked already", link.display());
    } else if link.exists() && std::fs::symlink_metadata(&link).map(|m| !m.file_type().is_symlink()).unwrap_or(false) {
        println!("{} exists and is not a link: left alone (it should be {})", link.display(), plugin.display());
    } else {
        let _ = std::fs::remove_file(&link);
        if let Err(e) = std::os::unix::fs::symlink(&plugin, &link) {
            eprintln!("pecora: cannot link {} to {}: {e}", link.display(), plugin.display());
            return 2;
        }
        println!("linked:   {} -> {}", link.display(), plugin.display());
    }
    println!(
        "now: enable {} in nginx (sites-enabled), `nginx -t`, and reload nginx and php-fpm (pecora does not)",
        a.nginx_site.display()
    );
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::fragments::Slot;

    #[test]
    fn values_that_would_break_out_are_refused() {
        let mut v = Values::new();
        v.insert("PRODUCT_NAME", Slot { value: Some("Alpha' . system('id') . '".into()), option: "--product-name" });
        v.insert("SERVER_NAME", Slot { value: Some("a.example; include /etc/x".into()), option: "--server-name" });
        assert_eq!(unsafe_values("x '@PRODUCT_NAME@'", &v, false).len(), 1);
        assert_eq!(unsafe_values("server_name @SERVER_NAME@;", &v, true).len(), 1);
        // A placeholder a fragment does not use is not judged there.
        assert!(unsafe_values("server_name @SERVER_NAME@;", &v, false).is_empty());
        v.insert("SERVER_NAME", Slot { value: Some("webmail.pec.example.it".into()), option: "--server-name" });
        assert!(unsafe_values("server_name @SERVER_NAME@;", &v, true).is_empty());
    }
}
