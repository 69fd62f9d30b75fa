//! The delivery point's safety net. Dovecot's Lua hook runs after the commit: if it fails
//! to drop its event (the process dies before the rename, the spool is unwritable, a script
//! error), the message sits in the mailbox and no avvenuta-consegna would ever leave; the
//! sender's provider would even send its holder a mancata consegna at 24 h for a message
//! that was delivered.
//!
//! So, every `delivery.reconcile_interval`, pecora takes the envelopes its reception point
//! took in charge for local mailboxes between 48 hours and `delivery.reconcile_after` ago,
//! keeps the (envelope, mailbox) pairs for which the registry holds neither a delivery nor
//! an errore-consegna, and asks Dovecot whether that mailbox holds the message (any folder,
//! by Message-ID). A copy found is certified exactly as if the hook had announced it
//! (worker::process: re-verified, idempotent under the same key, so a late hook event or a
//! second sweep sends nothing twice), with the time Dovecot saved it (read back with the
//! message, as for every delivery).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::adapters::doveadm;
use super::worker::{Outcome, process};
use super::DeliveryEvent;
use crate::runtime::state::Shared;
use crate::store::{EventRow, EventType};

/// How far back the sweep looks: well past the 24 h after which the sender's provider
/// gives up, so a late certification still reaches it.
const WINDOW: chrono::Duration = chrono::Duration::hours(48);
/// Take-charge records read from the registry at a time.
const BATCH: usize = 500;

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// (envelope, mailbox) pairs with neither a delivery nor an errore-consegna.
    pub open: usize,
    /// Of those, found in Dovecot and certified now.
    pub certified: usize,
}

/// The recipients of a take-charge record still waiting for a delivery outcome, given every
/// registry row of that envelope.
pub fn open_recipients(taken: &EventRow, history: &[EventRow]) -> Vec<String> {
    // Each of these records names the mailbox among its recipients.
    let settled = |r: &str| {
        history.iter().any(|e| {
            matches!(e.kind(), Some(EventType::Delivery | EventType::NonDelivery | EventType::Virus))
                && e.recipient_list().iter().any(|x| x.eq_ignore_ascii_case(r))
        })
    };
    taken.recipient_list().into_iter().filter(|r| !settled(r)).collect()
}

/// One sweep at `now`.
pub async fn sweep(shared: &Shared, now: DateTime<Utc>) -> Result<Report, crate::store::StoreError> {
    let runtime = shared.snapshot();
    let delivery = &runtime.config.delivery;
    let backend = shared.store.backend();
    let (from, until) = (now - WINDOW, now - delivery.reconcile_after.chrono());
    let mut report = Report::default();
    let mut after_seq = 0;
    loop {
        let taken = backend.events_of_type_between(EventType::TakeChargeEmitted, from, until, after_seq, BATCH).await?;
        let Some(last) = taken.last() else { break };
        after_seq = last.seq;
        sweep_batch(shared, &runtime, &taken, &mut report).await?;
    }
    Ok(report)
}

async fn sweep_batch(
    shared: &Shared,
    runtime: &crate::runtime::state::Runtime,
    taken: &[EventRow],
    report: &mut Report,
) -> Result<(), crate::store::StoreError> {
    let delivery = &runtime.config.delivery;
    let backend = shared.store.backend();
    for row in taken {
        let Some(pec_id) = row.pec_id.as_deref().filter(|p| !p.is_empty()) else { continue };
        let history = backend.events_of_pec_id(pec_id).await?;
        for recipient in open_recipients(row, &history) {
            report.open += 1;
            // PEC mailboxes are Dovecot users named by their address.
            let user = recipient.to_ascii_lowercase();
            let found = match doveadm::locate(delivery, &user, &format!("<{pec_id}>")).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(%pec_id, %recipient, "reconciliation: cannot ask Dovecot: {e}");
                    continue;
                }
            };
            // The earliest copy is the delivery.
            let Some(copy) = found.into_iter().min_by_key(|l| l.saved) else { continue };
            let event = DeliveryEvent {
                user,
                mailbox: copy.mailbox.clone(),
                uidvalidity: 0,
                uid: copy.uid,
                message_id: format!("<{pec_id}>"),
                reconciled: true,
            };
            match process(shared, &event).await {
                Ok(Outcome::Receipt { replayed: false, variant, .. }) => {
                    report.certified += 1;
                    tracing::warn!(
                        %pec_id, %recipient, mailbox = %copy.mailbox, uid = copy.uid, variant = variant.as_str(),
                        "stored without a hook event (found by reconciliation): avvenuta-consegna queued"
                    );
                }
                Ok(Outcome::Receipt { replayed: true, .. }) => {}
                Ok(Outcome::NoReceipt(why)) => {
                    tracing::info!(%pec_id, %recipient, "reconciliation: a copy is stored but gets no receipt: {why}");
                }
                Err(e) => tracing::warn!(%pec_id, %recipient, "reconciliation: cannot certify the stored copy: {e}"),
            }
        }
    }
    Ok(())
}

/// Sweeps every `delivery.reconcile_interval` until `stop` (never when it is 0). The
/// interval is read again every second, so a reload takes effect at once.
pub async fn run(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let interval = shared.snapshot().config.delivery.reconcile_interval.std();
        if interval.is_zero() || last.elapsed() < interval {
            continue;
        }
        last = tokio::time::Instant::now();
        match sweep(&shared, Utc::now()).await {
            Ok(r) if r.certified > 0 => tracing::warn!(open = r.open, certified = r.certified, "reconciliation sweep certified stored messages the hook never announced"),
            Ok(r) => tracing::debug!(open = r.open, "reconciliation sweep: nothing stored without a receipt"),
            Err(e) => tracing::warn!("reconciliation sweep failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: EventType, recipients: &[&str], key: Option<&str>) -> EventRow {
        EventRow {
            event_type: kind.as_str().into(),
            pec_id: Some("id1@pec.alpha.test".into()),
            recipients: serde_json::to_string(recipients).unwrap(),
            idempotency_key: key.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn a_mailbox_is_open_until_delivered_refused_or_quarantined() {
        let taken = row(EventType::TakeChargeEmitted, &["a@pec.beta.test", "B@pec.beta.test", "c@pec.beta.test", "d@pec.beta.test"], None);
        let mut history = vec![taken.clone()];
        assert_eq!(open_recipients(&taken, &history).len(), 4);
        history.push(row(EventType::Delivery, &["a@pec.beta.test"], Some("dlv:id1@pec.alpha.test:a@pec.beta.test")));
        history.push(row(EventType::NonDelivery, &["b@pec.beta.test"], None));
        history.push(row(EventType::Virus, &["c@pec.beta.test"], None));
        // Events of other kinds (an anomaly, a notice received) settle nothing.
        history.push(row(EventType::Anomaly, &["d@pec.beta.test"], None));
        assert_eq!(open_recipients(&taken, &history), vec!["d@pec.beta.test".to_string()]);
    }
}
