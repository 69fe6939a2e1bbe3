//! Certificate rotation: a new certificate at half the current one's lifetime (Istio's agent
//! default), retried with backoff until the CA answers. The old certificate keeps serving
//! meanwhile, so rotation never fails a request.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{ca::CaClient, CurrentCert, Issued};
use crate::{backoff::Backoff, metrics::Metrics};

/// Never renew more often than this, whatever the certificate says.
const MIN_WAIT: Duration = Duration::from_secs(1);

/// Renews `cert` from `ca` forever.
pub async fn run(ca: CaClient, cert: Arc<CurrentCert>, metrics: Arc<Metrics>) {
    loop {
        let current = cert.get();
        // Half of what was left when it arrived: CAs back-date `notBefore` for clock skew,
        // which for a short-lived certificate would put its half-life in the past.
        let remaining = current
            .not_after
            .duration_since(current.received)
            .unwrap_or_default();
        let renew_at = current.received + remaining / 2;
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(MIN_WAIT);
        tokio::time::sleep(wait).await;
        let issued = fetch(&ca, "certificate renewal failed; keeping the current one").await;
        tracing::info!(serial = %issued.serial, previous = %current.serial, "certificate rotated");
        metrics.certificate(&issued);
        cert.replace(issued);
    }
}

/// Asks the CA until it answers, with jittered backoff between failures.
pub async fn fetch(ca: &CaClient, failure: &'static str) -> Issued {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        match ca.fetch().await {
            Ok(issued) => return issued,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, ?delay, "{failure}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
