//! Requests that timed out and were cancelled, kept so that their data still counts when it
//! arrives after all: a slow uploader that had already queued the block sends it anyway, and
//! throwing it away would make a seed slower than its request queue send every block twice
//! (or, shared by several downloads, never finish one).

use std::collections::BTreeMap;

use super::{DownloadError, Request};

/// Most cancelled requests remembered per download; the oldest are forgotten first.
const CAP: usize = 1024;

/// Timed-out requests by id (ids grow, so the first entry is the oldest).
#[derive(Debug)]
pub(super) struct LateRequests<P> {
    by_id: BTreeMap<u64, Request<P>>,
}

impl<P: Copy + Eq> LateRequests<P> {
    pub(super) fn new() -> Self {
        LateRequests {
            by_id: BTreeMap::new(),
        }
    }

    /// Remembers timed-out request `id`.
    pub(super) fn insert(&mut self, id: u64, req: Request<P>) {
        while self.by_id.len() >= CAP {
            self.by_id.pop_first();
        }
        self.by_id.insert(id, req);
    }

    /// The timed-out request `id`, if remembered.
    pub(super) fn get(&self, id: u64) -> Option<&Request<P>> {
        self.by_id.get(&id)
    }

    /// Takes request `id` out when `peer` is the one it was sent to.
    pub(super) fn take(&mut self, id: u64, peer: P) -> Result<Request<P>, DownloadError> {
        match self.by_id.get(&id) {
            None => Err(DownloadError::UnknownRequest { id }),
            Some(r) if r.peer != peer => Err(DownloadError::NotYourRequest { id }),
            Some(_) => self
                .by_id
                .remove(&id)
                .ok_or(DownloadError::UnknownRequest { id }),
        }
    }

    /// Forgets every request sent to `peer`.
    pub(super) fn remove_peer(&mut self, peer: P) {
        self.by_id.retain(|_, r| r.peer != peer);
    }

    /// How many are remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::picker::BlockRef;

    fn req(peer: u8) -> Request<u8> {
        Request {
            peer,
            block: BlockRef { piece: 0, block: 0 },
            offset: 0,
            length: 1,
            deadline: Instant::now(),
        }
    }

    #[test]
    fn only_its_peer_takes_a_request_and_the_oldest_are_forgotten_first() {
        let mut late = LateRequests::new();
        for id in 0..CAP as u64 + 5 {
            late.insert(id, req(1));
        }
        assert_eq!(late.len(), CAP);
        assert!(late.get(4).is_none() && late.get(5).is_some());
        assert_eq!(
            late.take(5, 2).map(|_| ()),
            Err(DownloadError::NotYourRequest { id: 5 })
        );
        assert!(late.take(5, 1).is_ok());
        assert_eq!(
            late.take(5, 1).map(|_| ()),
            Err(DownloadError::UnknownRequest { id: 5 })
        );
        late.remove_peer(1);
        assert_eq!(late.len(), 0);
    }
}
