use tokio::{sync::mpsc, time::Instant};

use super::*;

#[tokio::test(start_paused = true)]
async fn a_burst_settles_after_a_quiet_spell() {
    let (send, mut changes) = mpsc::unbounded_channel();
    let start = Instant::now();
    for _ in 0..3 {
        send.send(()).expect("receiver alive");
    }
    assert!(settle(&mut changes, |()| {}).await);
    assert_eq!(start.elapsed(), DEBOUNCE);
    drop(send);
    assert!(!settle(&mut changes, |()| {}).await, "the sender is gone");
}

#[tokio::test(start_paused = true)]
async fn a_source_changing_without_pause_cannot_hold_a_rebuild_back() {
    let (send, mut changes) = mpsc::unbounded_channel();
    let writer = tokio::spawn(async move {
        while send.send(()).is_ok() {
            tokio::time::sleep(DEBOUNCE / 2).await;
        }
    });
    let start = Instant::now();
    // Bounded, so a regression of the cap fails instead of waiting forever.
    let settled = tokio::time::timeout(MAX_DELAY * 2, settle(&mut changes, |()| {})).await;
    assert_eq!(settled, Ok(true), "the burst never settled");
    assert_eq!(start.elapsed(), MAX_DELAY);
    drop(changes);
    writer.await.expect("the writer stops");
}
