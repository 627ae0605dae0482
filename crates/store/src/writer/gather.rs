//! Gathering a batch: the requests queued for the writer, taken in order up to the batch
//! limits (`max_batch_events`, `max_batch_bytes`).
//!
//! What waits in `carry` (requests held back or re-queued) goes before anything new; the
//! channel is read without waiting, except when the writer has nothing else to do. A
//! rotation request stops the gathering: it runs once nothing is in flight, and nothing
//! queued after it is taken before it ran. The same routine ([`take_queued`]) reads the
//! channel for the writer's loop and for the pipeline, which keeps taking requests while
//! a commit runs.

use std::collections::VecDeque;

use tokio::sync::mpsc;

use super::{AppendRequest, Request, RotateRequest, Writer};
use crate::StoreConfig;

/// What one gathering left the writer's loop to do.
pub(super) enum Gathered {
    /// Plan (and commit) this batch; it may be empty.
    Batch(Vec<AppendRequest>),
    /// A rotation request arrived while the writer was idle: run it first.
    Rotation,
    /// Every store handle is gone: stop.
    Closed,
}

/// Running totals of a batch being gathered, against the batch limits.
#[derive(Debug)]
pub(super) struct Gathering {
    events: usize,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl Gathering {
    /// The totals of `batch`, under the limits of `config`.
    pub(super) fn new(config: &StoreConfig, batch: &[AppendRequest]) -> Self {
        Self {
            events: batch.iter().map(|r| r.events.len()).sum(),
            bytes: batch.iter().map(AppendRequest::payload_bytes).sum(),
            max_events: config.max_batch_events,
            max_bytes: config.max_batch_bytes,
        }
    }

    /// Below both limits: one more request may be taken, whatever its size.
    fn has_room(&self) -> bool {
        self.events < self.max_events && self.bytes < self.max_bytes
    }

    /// `r` can be added without passing either limit.
    pub(super) fn fits(&self, r: &AppendRequest) -> bool {
        self.events + r.events.len() <= self.max_events && self.bytes + r.payload_bytes() <= self.max_bytes
    }

    pub(super) fn add(&mut self, r: &AppendRequest) {
        self.events += r.events.len();
        self.bytes += r.payload_bytes();
    }

    /// Move requests from the front of `carry` to `batch` while there is room.
    fn take_carried(&mut self, carry: &mut VecDeque<AppendRequest>, batch: &mut Vec<AppendRequest>) {
        while self.has_room() {
            match carry.pop_front() {
                Some(r) => {
                    self.add(&r);
                    batch.push(r);
                }
                None => break,
            }
        }
    }
}

/// Take the requests already queued on `rx`, never waiting: `first` (one just received),
/// then each next one while `take` accepts the appends it is given (`take` answers false
/// when it stops the gathering; it keeps or sets aside the request either way). A rotation
/// request stops the gathering too, and waits in `rotation`. Answers false when stopped,
/// true when the queue ran empty.
pub(super) fn take_queued(
    rx: &mut mpsc::Receiver<Request>,
    first: Option<Request>,
    rotation: &mut Option<RotateRequest>,
    mut take: impl FnMut(AppendRequest) -> bool,
) -> bool {
    let mut incoming = first;
    while let Some(req) = incoming.take() {
        match req {
            Request::Append(r) => {
                if !take(r) {
                    return false;
                }
            }
            Request::Rotate(r) => {
                *rotation = Some(r);
                return false;
            }
        }
        incoming = rx.try_recv().ok();
    }
    true
}

/// Queue `batch` before everything in `carry`, in order; with `look_up`, to be planned
/// with its event ids looked up.
pub(super) fn requeue_front(carry: &mut VecDeque<AppendRequest>, batch: Vec<AppendRequest>, look_up: bool) {
    for mut r in batch.into_iter().rev() {
        r.look_up |= look_up;
        carry.push_front(r);
    }
}

impl Writer {
    /// Gather the next batch. Block only when there is nothing to do (`idle`: nothing in
    /// flight, nothing carried, no rotation pending). What waits in `carry` goes first;
    /// the channel is read only while no rotation is pending.
    pub(super) async fn gather(
        &mut self,
        idle: bool,
        carry: &mut VecDeque<AppendRequest>,
        rotation: &mut Option<RotateRequest>,
    ) -> Gathered {
        let mut batch: Vec<AppendRequest> = Vec::new();
        if rotation.is_none() && idle && carry.is_empty() {
            match self.rx.recv().await {
                Some(Request::Append(r)) => batch.push(r),
                Some(Request::Rotate(r)) => {
                    *rotation = Some(r);
                    return Gathered::Rotation;
                }
                None => return Gathered::Closed,
            }
        }
        let mut gathering = Gathering::new(&self.planner.config, &batch);
        gathering.take_carried(carry, &mut batch);
        if rotation.is_none() && gathering.has_room() {
            let first = self.rx.try_recv().ok();
            take_queued(&mut self.rx, first, rotation, |r| {
                gathering.add(&r);
                batch.push(r);
                gathering.has_room()
            });
        }
        Gathered::Batch(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{append, rotate_request, stream, writer};
    use super::*;

    fn events(r: &[AppendRequest]) -> Vec<usize> {
        r.iter().map(|r| r.events.len()).collect()
    }

    fn config(max_events: usize, max_bytes: usize) -> StoreConfig {
        StoreConfig { max_batch_events: max_events, max_batch_bytes: max_bytes, ..StoreConfig::default() }
    }

    #[test]
    fn requeue_front_keeps_the_order_before_what_waits() {
        let mut carry: VecDeque<AppendRequest> = VecDeque::new();
        carry.push_back(append(stream(9), 1).0);
        let batch = vec![append(stream(1), 1).0, append(stream(2), 2).0];
        requeue_front(&mut carry, batch, true);
        let streams: Vec<_> = carry.iter().map(|r| r.stream.clone()).collect();
        assert_eq!(streams, [stream(1), stream(2), stream(9)]);
        let look_up: Vec<bool> = carry.iter().map(|r| r.look_up).collect();
        assert_eq!(look_up, [true, true, false], "only the requeued requests are looked up");
        // Without `look_up`, a request keeps the flag it had.
        let batch: Vec<_> = carry.drain(..1).collect();
        requeue_front(&mut carry, batch, false);
        assert!(carry[0].look_up);
    }

    #[test]
    fn gathering_takes_one_more_while_below_the_limits_but_fits_only_within_them() {
        let cfg = config(10, 1000);
        let (nine, _) = append(stream(1), 9);
        let mut g = Gathering::new(&cfg, std::slice::from_ref(&nine));
        assert!(g.has_room());
        let (two, _) = append(stream(2), 2);
        assert!(!g.fits(&two), "9 + 2 events pass the limit of 10");
        let (one, _) = append(stream(3), 1);
        assert!(g.fits(&one));
        g.add(&two);
        assert!(!g.has_room());
        let mut bytes = Gathering::new(&config(10, 4), &[]);
        let mut big = append(stream(4), 1).0;
        big.events[0].payload = vec![0; 5];
        assert!(!bytes.fits(&big));
        bytes.add(&big);
        assert!(!bytes.has_room(), "the byte limit counts too");
    }

    #[tokio::test]
    async fn take_queued_stops_at_a_rotation_and_leaves_what_follows_queued() {
        let (tx, mut rx) = mpsc::channel(8);
        tx.try_send(Request::Append(append(stream(1), 1).0)).unwrap();
        tx.try_send(Request::Rotate(rotate_request().0)).unwrap();
        tx.try_send(Request::Append(append(stream(2), 1).0)).unwrap();
        let mut rotation = None;
        let mut taken = Vec::new();
        let first = rx.try_recv().ok();
        let open = take_queued(&mut rx, first, &mut rotation, |r| {
            taken.push(r);
            true
        });
        assert!(!open);
        assert!(rotation.is_some());
        assert_eq!(taken.len(), 1);
        assert!(matches!(rx.try_recv(), Ok(Request::Append(r)) if r.stream == stream(2)));
    }

    #[tokio::test]
    async fn take_queued_stops_when_refused_and_runs_until_the_queue_is_empty() {
        let (tx, mut rx) = mpsc::channel(8);
        for n in 1..=3 {
            tx.try_send(Request::Append(append(stream(n), 1).0)).unwrap();
        }
        let mut rotation = None;
        let mut seen = 0;
        let open = take_queued(&mut rx, None, &mut rotation, |_| unreachable!());
        assert!(open, "nothing received, nothing taken");
        let first = rx.try_recv().ok();
        let open = take_queued(&mut rx, first, &mut rotation, |_| {
            seen += 1;
            seen < 2
        });
        assert!(!open);
        assert_eq!(seen, 2, "the refused request was handed over, and nothing after it");
        let first = rx.try_recv().ok();
        assert!(take_queued(&mut rx, first, &mut rotation, |_| true), "the queue ran empty");
        assert!(rotation.is_none());
    }

    #[tokio::test]
    async fn gather_takes_carried_requests_first_up_to_the_limits() {
        let (mut w, tx) = writer(config(4, 1 << 20));
        let mut carry: VecDeque<AppendRequest> = [append(stream(1), 2).0, append(stream(2), 1).0].into();
        for n in 3..=5 {
            tx.try_send(Request::Append(append(stream(n), 1).0)).unwrap();
        }
        let mut rotation = None;
        let Gathered::Batch(batch) = w.gather(true, &mut carry, &mut rotation).await else {
            panic!("expected a batch");
        };
        let streams: Vec<_> = batch.iter().map(|r| r.stream.clone()).collect();
        assert_eq!(streams, [stream(1), stream(2), stream(3)], "carried first, then the channel");
        assert_eq!(events(&batch), [2, 1, 1]);
        assert!(carry.is_empty());
        assert!(matches!(w.rx.try_recv(), Ok(Request::Append(r)) if r.stream == stream(4)));
    }

    #[tokio::test]
    async fn gather_waits_only_when_idle_and_reads_nothing_while_a_rotation_waits() {
        let (mut w, tx) = writer(StoreConfig::default());
        let mut carry = VecDeque::new();
        let mut rotation = None;
        // Busy (something in flight) and nothing queued: an empty batch, at once.
        assert!(
            matches!(w.gather(false, &mut carry, &mut rotation).await, Gathered::Batch(b) if b.is_empty())
        );
        tx.try_send(Request::Rotate(rotate_request().0)).unwrap();
        assert!(matches!(w.gather(true, &mut carry, &mut rotation).await, Gathered::Rotation));
        assert!(rotation.is_some());
        tx.try_send(Request::Append(append(stream(1), 1).0)).unwrap();
        let g = w.gather(true, &mut carry, &mut rotation).await;
        assert!(matches!(g, Gathered::Batch(b) if b.is_empty()), "the rotation goes first");
        rotation = None;
        let g = w.gather(true, &mut carry, &mut rotation).await;
        assert!(matches!(g, Gathered::Batch(b) if events(&b) == [1]));
        drop(tx);
        assert!(matches!(w.gather(true, &mut carry, &mut rotation).await, Gathered::Closed));
    }
}
