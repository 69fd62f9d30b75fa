//! Talking to other programs and the system: SMTP injection into Postfix, clamd, alert
//! webhooks, Dovecot's doveadm, Postfix's configuration (postconf), local users and groups,
//! inotify watches. Each adapter speaks one protocol and knows nothing of the points that
//! use it; they may use the configuration model and the pure PEC core only.

pub mod alerts;
pub mod clamd;
pub mod doveadm;
pub mod inject;
pub mod postfix;
pub mod system;
pub mod watch;
