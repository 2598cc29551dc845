//! JetStream messages the stack stores per turn, stream by stream: the requests queue,
//! the turns' progress (the `accepted` chunk, tool-call chunks, text deltas) and the
//! replies. Each stored message is a write in nats-server and, for the requests and
//! replies, a round trip for its publisher's ack.
//!
//! Counted from each stream's last sequence number, which grows by one per stored
//! message whatever the stream later removes (the requests stream drops acked ones).

use anyhow::Context;
use testkit::TestBus;

/// The last sequence of each counted stream, at one moment.
pub(crate) struct Sequences(Vec<(&'static str, u64)>);

/// Reads the last sequence of the stack's chat streams.
pub(crate) async fn sample(bus: &TestBus) -> anyhow::Result<Sequences> {
    let (jetstream, subjects) = (bus.jetstream(), &bus.subjects);
    let mut sequences = Vec::new();
    for (label, name) in [
        ("requests", subjects.chat_requests_stream()),
        ("progress", subjects.chat_progress_stream()),
        ("replies", subjects.chat_replies_stream()),
    ] {
        // Opening a stream reads its info: that answer is the sample.
        let stream = jetstream
            .get_stream(&name)
            .await
            .with_context(|| format!("failed to read stream {name}"))?;
        sequences.push((label, stream.cached_info().state.last_sequence));
    }
    Ok(Sequences(sequences))
}

/// Prints the messages stored per turn between `before` and `after`.
pub(crate) fn report(before: &Sequences, after: &Sequences, turns: u64) {
    let turns = turns.max(1) as f64;
    let mut total = 0;
    let mut parts = Vec::new();
    for ((label, first), (_, last)) in before.0.iter().zip(&after.0) {
        let stored = last.saturating_sub(*first);
        total += stored;
        parts.push(format!("{label} {:.1}", stored as f64 / turns));
    }
    println!(
        "JetStream messages stored during the concurrent run: {total} = {:.1} per turn ({})",
        total as f64 / turns,
        parts.join(", ")
    );
}
